"""How the parts start: the embedded broker, the worker, the command line, deployment files."""
