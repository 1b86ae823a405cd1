"""Parameter count and forward FLOPs per 48x48 image of every registered model, as a Markdown table.

python scripts/model_table.py
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ferjax import models  # noqa: E402


def main():
    print("| model | parameters | forward MFLOPs / image |")
    print("|---|---:|---:|")
    for name in models.names():
        info = models.describe(name)
        print(f"| `{name}` | {info['params']:,} | {info['flops'] / 1e6:.1f} |")


if __name__ == "__main__":
    main()
