"""Build webdataset shards (thin wrapper over `clipav2 data shards`; see docs/data.md).

    python tools/make_shards.py captions.csv /data/shards
    python tools/make_shards.py '/data/laion/{00000..00999}.tar' /data/laion112 --resize 112
"""
import sys

from clipav2.cli import main

if __name__ == "__main__":
    sys.exit(main(["data", "shards", *sys.argv[1:]]))
