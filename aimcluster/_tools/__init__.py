"""The built-in tool profiles, a module per tool or family of tools, and the registry of
names. :mod:`aimcluster.tools` is their public face. The profiles build on the shared
vocabulary (specs, framings, usage) and import nothing else of aimcluster.
"""
