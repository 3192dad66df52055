import os
import sys

# The project is a flat set of top-level modules run from the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
