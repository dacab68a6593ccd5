"""Commission and settlement batch (SPEC 8-11).

The pure billing rules, no I/O: ``money`` (integer minor units and basis
points, half-even), ``rates`` (rate, channel-rate and fee books looked up at
payment), ``pools`` (one pool split by claim priority) and ``commission``
(terms frozen onto a paid line, its allocations, refund deltas).  The other
modules read and write the ledger database and run the batch around them.
"""
