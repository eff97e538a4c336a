"""The per-request CSV written by `client.py load`, and figures from it."""

def read_records(path):
    """Load a CSV written by `load` into a list of dicts."""
    rows = []
    with open(path) as f:
        next(f)
        for line in f:
            parts = line.rstrip("\n").split(",", 8)
            rows.append(
                {
                    "start": float(parts[0]),
                    "end": float(parts[1]),
                    "target": int(parts[2]),
                    "conn": int(parts[3]),
                    "outcome": parts[4],
                    "status": int(parts[5]),
                    "reused": parts[6] == "1",
                    "instance": parts[7],
                    "note": parts[8],
                }
            )
    return rows


def percentile(values, fraction):
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))
    return ordered[index]


def summarize(rows):
    """Count outcomes and statuses and give latency figures in ms."""
    outcomes = {}
    statuses = {}
    for row in rows:
        outcomes[row["outcome"]] = outcomes.get(row["outcome"], 0) + 1
        if row["status"]:
            key = str(row["status"])
            statuses[key] = statuses.get(key, 0) + 1
    answered = [1000 * (r["end"] - r["start"]) for r in rows if r["status"]]
    return {
        "requests": sum(1 for r in rows if r["outcome"] != "refused"),
        "outcomes": outcomes,
        "statuses": statuses,
        "p50_ms": rounded(percentile(answered, 0.50)),
        "p99_ms": rounded(percentile(answered, 0.99)),
        "max_ms": rounded(max(answered) if answered else None),
    }


def rounded(value):
    return None if value is None else round(value, 2)
