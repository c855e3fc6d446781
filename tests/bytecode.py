"""Whether Python would use a source file's bytecode cache instead of compiling it again.

The guest agent starts fast because its launch imports the file, and Python
then loads __pycache__/<name>.cpython-XY.pyc if the cache matches the source
(PEP 552: mtime and size, or a hash when SOURCE_DATE_EPOCH asked for one).
FRESH_CHECK is a python3 -c program, so it runs the same here and in a guest;
it prints True or what is wrong.
"""

from __future__ import annotations

FRESH_CHECK = """
import importlib.util as u, os, struct, sys
src = sys.argv[1]
try:
    head = open(u.cache_from_source(src), "rb").read(16)
except OSError as e:
    print(f"no bytecode cache: {e}"); sys.exit(0)
flags, a, b = struct.unpack("<3I", head[4:16])
st = os.stat(src)
if head[:4] != u.MAGIC_NUMBER:
    print("cache written by another python")
elif flags & 1:
    print(True if head[8:16] == u.source_hash(open(src, "rb").read()) else "hash differs from the source")
else:
    print(True if (a, b) == (int(st.st_mtime) & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF) else "stale: source changed")
"""
