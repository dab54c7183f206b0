"""One instance of a tool: its slot (:mod:`.instance`: supervision, the serve loop, leases,
probes and the fast paths), its process (:mod:`.process`), its exchange (:mod:`.exchange`, the
sans-IO prompt-to-reply state machine, with :mod:`.oneshot` and :mod:`.outcomes`) and its
recycling and probe schedule (:mod:`.upkeep`).
"""
