"""The vocabulary every part of the engine shares: errors, prompts and replies, specs and
framings, queues, routing, pauses, policies, metrics and usage. It imports nothing else of
aimcluster.
"""
