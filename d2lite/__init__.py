"""d2lite: a small, readable, detectron2-style object detection codebase."""

import warnings

__version__ = "0.1.0"

# fvcore.nn scripts its focal loss with torch.jit at import time, which torch >= 2.9
# reports on every start of every tool; d2lite never uses that scripted function.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
