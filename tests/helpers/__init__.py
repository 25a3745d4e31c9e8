"""What the tests run on the ranks of a worker pool, and the test doubles they check against.

Functions handed to ``pool.run`` are pickled by qualified name (``helpers.workers.healthy``) and
imported again in each spawned rank, which inherits the test process's ``sys.path`` (pytest puts
``tests/`` on it, as the directory of the rootmost ``conftest.py``).
"""
