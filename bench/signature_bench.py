"""Cost of checking a webhook signature: compacting the body and the HMACs, per body size.

    python -m bench.signature_bench [--repeat 20]

Bodies: a real ``customer.updated`` delivery (compact, and indented by 4), the same grown to
about 1 MiB (the receiver's default body limit) with indented customers, and hostile 1 MiB
bodies (nothing but empty strings, nothing but whitespace, escaped quotes, an unterminated
string). Prints the median time of ``verify_signature`` with two secrets (the matching one
second, the worst case) and MB/s. Figures only: nothing asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from models.signature import compact_json, sign, verify_signature

EVENTS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "voucherify" / "events"
MIB = 1024 * 1024


def bodies() -> dict[str, bytes]:
    customer = json.loads((EVENTS / "04-customer.updated-data.json").read_bytes())
    delivery = {"id": "whs_bench", "type": "customer.updated", "data": customer,
                "event": {"id": "evcus_bench", "type": "customer.updated"}}
    many = {"customers": [customer] * (MIB // len(json.dumps(customer, indent=4)))}
    return {
        "delivery, compact": json.dumps(delivery, separators=(",", ":")).encode(),
        "delivery, indented": json.dumps(delivery, indent=4).encode(),
        "~1 MiB, indented": json.dumps(many, indent=4).encode()[:MIB],
        "1 MiB of empty strings": b"[" + b'"",' * (MIB // 3 - 1) + b'""]',
        "1 MiB of whitespace": b"[" + b" " * (MIB - 2) + b"]",
        "1 MiB of escaped quotes": b'["' + b'\\"' * (MIB // 2 - 2) + b'"]',
        "1 MiB unterminated string": b'["' + b"x" * (MIB - 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    secrets = [b"previous-secret", b"current-secret"]
    print(f"{'body':<28}{'bytes':>10}{'verify ms':>12}{'MB/s':>10}")
    for name, body in bodies().items():
        signature = sign(compact_json(body), secrets[-1])
        times = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            verify_signature(body, signature, secrets)
            times.append(time.perf_counter() - started)
        median = statistics.median(times)
        print(f"{name:<28}{len(body):>10}{median * 1000:>12.3f}{len(body) / median / 1e6:>10.1f}")


if __name__ == "__main__":
    main()
