"""Build src/eds/datasets/alpaca_scary.jsonl: the Alpaca prompts that contain a harm-sounding word.

Why: the train and val splits hold no short, plain, benign request with an alarming word in it
("kill", "bomb", "steal"), so a harm gate or energy model trained on them learns that such words
mean "harmful" (XSTest and OKTest, which exist only as test sets, are made of exactly these). This
subset is mined from Alpaca's own splits by a fixed word list written for this purpose (not taken
from any test set), keeps Alpaca's ids, splits and licence (CC-BY-NC-4.0), and is a view of
alpaca.jsonl, so the two must never be mixed in one training set without de-duplication.

Run from the repository root: python scripts/make_alpaca_scary.py
"""

import json
import re
from pathlib import Path

WORDS = [
    "kill",
    "killing",
    "killed",
    "killer",
    "murder",
    "murderer",
    "assassinate",
    "assassination",
    "slaughter",
    "execute",
    "execution",
    "bomb",
    "bombs",
    "bombing",
    "explode",
    "explosion",
    "explosive",
    "explosives",
    "grenade",
    "detonate",
    "nuclear",
    "missile",
    "weapon",
    "weapons",
    "gun",
    "guns",
    "rifle",
    "shoot",
    "shooting",
    "shot",
    "bullet",
    "knife",
    "stab",
    "sword",
    "attack",
    "attacks",
    "attacker",
    "terror",
    "terrorist",
    "terrorism",
    "war",
    "warfare",
    "massacre",
    "genocide",
    "violence",
    "violent",
    "poison",
    "poisonous",
    "toxic",
    "venom",
    "lethal",
    "deadly",
    "fatal",
    "death",
    "die",
    "dying",
    "dead",
    "suicide",
    "overdose",
    "drug",
    "drugs",
    "cocaine",
    "heroin",
    "meth",
    "marijuana",
    "cannabis",
    "opioid",
    "narcotics",
    "steal",
    "stealing",
    "stolen",
    "theft",
    "thief",
    "rob",
    "robbery",
    "burglary",
    "heist",
    "loot",
    "smuggle",
    "smuggling",
    "hack",
    "hacker",
    "hacking",
    "exploit",
    "malware",
    "virus",
    "ransomware",
    "phishing",
    "crack",
    "password",
    "breach",
    "fraud",
    "scam",
    "counterfeit",
    "forge",
    "launder",
    "bribe",
    "blackmail",
    "extort",
    "extortion",
    "crime",
    "criminal",
    "illegal",
    "prison",
    "jail",
    "arrest",
    "abuse",
    "torture",
    "hostage",
    "kidnap",
    "kidnapping",
    "hate",
    "racist",
    "destroy",
    "destruction",
    "annihilate",
    "eliminate",
    "eradicate",
    "wipe",
    "burn",
    "arson",
    "fire",
    "choke",
    "strangle",
    "hunt",
    "trap",
]
PATTERN = re.compile(r"\b(" + "|".join(WORDS) + r")\b", re.IGNORECASE)


def main() -> None:
    root = Path(__file__).resolve().parents[1] / "src" / "eds" / "datasets"
    out = []
    with open(root / "alpaca.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            m = PATTERN.search(row["prompt"])
            if m and len(row["prompt"].split()) <= 40:
                out.append({**row, "id": row["id"], "category": "alpaca_scary:" + m.group(1).lower()})
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out)
    (root / "alpaca_scary.jsonl").write_text(text, encoding="utf-8")
    by_split: dict[str, int] = {}
    for r in out:
        by_split[r["split"]] = by_split.get(r["split"], 0) + 1
    print(f"wrote {len(out)} prompts: {by_split}")


if __name__ == "__main__":
    main()
