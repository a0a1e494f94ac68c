"""`python research/quality [options]`: the quality scorer's command line (quality/cli.py; --help lists the options).

Run as a folder, Python puts research/quality/ itself first on sys.path; the package and its sibling modules
(stats.py) are imported from research/, so that entry is replaced by research/ before anything is imported.
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

from quality.cli import main  # noqa: E402

sys.exit(main())
