"""Where tool processes run: this machine's process and pseudo-terminal handles, and how
nothing they start outlives the cluster.
"""
