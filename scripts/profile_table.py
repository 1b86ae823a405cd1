"""The README's tilt and zoom tables, built from the tilt_profile.json or zoom_profile.json files that
`experiments.visualize` writes.

python scripts/profile_table.py results/a/tilt_profile.json results/b/tilt_profile.json
python scripts/profile_table.py results/*/zoom_profile.json

One row per run (named by its folder): the split's accuracy with every face turned by each angle (or
magnified by each factor) and, for attention models, what theta answers with beside it (its rotation in
degrees, or its magnification; mean over the faces).
"""

import json
import os
import sys

# Per kind of profile: the settings' key, theta's answer's key, and how a setting and an answer are written.
KINDS = {
    "tilt": ("degrees", "theta_degrees", "{:+g}°", "{:+.1f}°"),
    "zoom": ("zooms", "theta_zoom", "×{:g}", "×{:.3f}"),
}


def read_profile(path: str) -> tuple[str, dict]:
    """One profile and its kind ('tilt' or 'zoom'); ValueError naming the file if it is unreadable or neither."""
    try:
        with open(path) as f:
            profile = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable profile ({e})") from None
    if isinstance(profile, dict) and "split" in profile and "accuracy" in profile:
        for kind, (settings_key, *_) in KINDS.items():
            if settings_key in profile:
                return kind, profile
    raise ValueError(f"{path}: not a tilt_profile.json or zoom_profile.json (it needs split, accuracy and "
                     f"{' or '.join(settings_key for settings_key, *_ in KINDS.values())})")


def row(name: str, kind: str, profile: dict) -> str:
    _, answer_key, _, answer_format = KINDS[kind]
    answers = profile.get(answer_key, {}).get("mean")
    cells = [f"{100 * accuracy:.2f}" + (f" ({answer_format.format(answers[i])})" if answers else "")
             for i, accuracy in enumerate(profile["accuracy"])]
    return f"| {name} | " + " | ".join(cells) + " |"


def profile_table(named_profiles: list[tuple[str, str, dict]]) -> list[str]:
    _, kind, first = named_profiles[0]
    settings_key, _, setting_format, _ = KINDS[kind]
    if any(k != kind or p[settings_key] != first[settings_key] or p["split"] != first["split"]
           for _, k, p in named_profiles):
        raise ValueError("the profiles are of different kinds, warp faces differently or score different splits")
    header = (f"| run ({first['split']} accuracy %, theta's mean answer) | "
              + " | ".join(setting_format.format(x) for x in first[settings_key]) + " |")
    return [header, "|---|" + "---:|" * len(first[settings_key])] + [row(n, k, p) for n, k, p in named_profiles]


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python scripts/profile_table.py results/*/tilt_profile.json (or zoom_profile.json)",
              file=sys.stderr)
        return 1
    try:
        named = [(os.path.basename(os.path.dirname(os.path.abspath(p))), *read_profile(p)) for p in argv]
        print("\n".join(profile_table(named)))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
