"""absl binaries. Importing this package pins OpenBLAS to one thread.

JAX's CPU SVD/solve call SciPy's OpenBLAS, whose thread pool is much slower
than one thread on the small matrices these experiments use (measured: a
64x64 SVD at ~100 ms vs ~0.7 ms on a loaded 2-core machine). Set
OPENBLAS_NUM_THREADS yourself to override.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
