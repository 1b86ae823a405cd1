"""The README's tilt table, built from the tilt_profile.json files `experiments.visualize` writes.

python scripts/tilt_table.py results/a/tilt_profile.json results/b/tilt_profile.json

One row per run (named by its folder): the split's accuracy with every face turned by each angle and,
for attention models, the rotation theta answers with beside it (mean over the faces, degrees).
"""

import json
import os
import sys

KEYS = ("split", "degrees", "accuracy")


def read_profile(path: str) -> dict:
    """One tilt profile; ValueError naming the file if it is unreadable or not a tilt profile."""
    try:
        with open(path) as f:
            profile = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable tilt_profile.json ({e})") from None
    if not isinstance(profile, dict) or any(key not in profile for key in KEYS):
        raise ValueError(f"{path}: not a tilt_profile.json (it needs {', '.join(KEYS)})")
    return profile


def row(name: str, profile: dict) -> str:
    answers = profile.get("theta_degrees", {}).get("mean")
    cells = [f"{100 * accuracy:.2f}" + (f" ({answers[i]:+.1f}°)" if answers else "")
             for i, accuracy in enumerate(profile["accuracy"])]
    return f"| {name} | " + " | ".join(cells) + " |"


def tilt_table(named_profiles: list[tuple[str, dict]]) -> list[str]:
    degrees = named_profiles[0][1]["degrees"]
    split = named_profiles[0][1]["split"]
    if any(p["degrees"] != degrees or p["split"] != split for _, p in named_profiles):
        raise ValueError("the profiles turn faces by different angles or score different splits")
    header = f"| run ({split} accuracy %, theta's mean answer) | " + " | ".join(f"{d:+g}°" for d in degrees) + " |"
    return [header, "|---|" + "---:|" * len(degrees)] + [row(name, p) for name, p in named_profiles]


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python scripts/tilt_table.py results/*/tilt_profile.json", file=sys.stderr)
        return 1
    try:
        named = [(os.path.basename(os.path.dirname(os.path.abspath(p))), read_profile(p)) for p in argv]
        print("\n".join(tilt_table(named)))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
