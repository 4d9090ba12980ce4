"""The reference's resnets/extract.py flags, run by hero_features.legacy."""
import sys
from pathlib import Path

# A checkout runs without installing the package (the container mounts it at /src).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hero_features.legacy import extract_script  # noqa: E402

if __name__ == "__main__":
    sys.exit(extract_script("resnets"))
