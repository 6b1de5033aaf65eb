"""Put this folder on sys.path (for ``rtmdet_testing``); ``rtmdet`` itself is the installed
package (``pip install -e projects/RTMDet``, done by the Makefile)."""

import os
import sys

_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)
