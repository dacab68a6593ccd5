"""The redirect edge: signed link in, 302 + sealed cookie out, click event never lost."""
