"""One instance of a tool: its slot (supervision, the serve loop, leases, probes and the fast
paths) and its exchange (the sans-IO prompt-to-reply state machine).
"""
