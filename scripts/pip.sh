#!/usr/bin/env bash
# `make install`'s pip: runs the command given ($PY -m pip ...) less pip's notes on index
# locations that hold no such package (a pip.conf naming file:// indexes or find-links gives
# one a package, hundreds in a first install). Every other line, and the command's exit
# status, pass through. setuptools' note on every editable install (mind folders named like
# a package in the working directory) is a developer's concern, not an installer's: left out.
set -o pipefail
export PYTHONWARNINGS="${PYTHONWARNINGS:+$PYTHONWARNINGS,}ignore:Editable installation"
{ "$@" 2>&1 1>&3 3>&- \
    | sed "/^WARNING: Location '[^']*' is ignored: it is neither a file nor a directory\.$/d" >&2 3>&-
} 3>&1
