"""What crosses service boundaries: link form, cookie seal, click schema, topic names.

Services import this package; it imports no service.
"""
