import sys

# `python -m tracer` puts the current folder first on sys.path. Run inside a workspace, that lets any
# folder there (a `sklearn/`, say) shadow an installed package; tracer loads the vendor's modules itself.
if sys.path and sys.path[0] in ("", __import__("os").getcwd()):
    del sys.path[0]

from .cli import main

main()
