"""Put tests/ on sys.path so `import <topic>_support` works (pytest runs with importlib mode)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
