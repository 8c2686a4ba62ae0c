"""Summary of benches/embed/run.sh: reads the RESULT lines on stdin, keeps each embedder's best
round, and prints sentences/s, sentences per CPU-second, the ratio to warren and the worst cosine
against the reference vectors."""
import re
import sys

best = {}
for line in sys.stdin:
    m = re.match(r"RESULT (\S+) (.*)", line.strip())
    if not m:
        continue
    kv = dict(re.findall(r"(\w+)=(\S+)", m.group(2)))
    b = best.setdefault(m.group(1), {"wall": 0.0, "cpu": 0.0, "cos": kv.get("min_cosine_vs_reference", "n/a")})
    b["wall"] = max(b["wall"], float(kv.get("sentences_per_s", "nan")))
    b["cpu"] = max(b["cpu"], float(kv.get("sentences_per_cpu_s", "nan")))
w = best.get("warren-fp32", {}).get("wall", float("nan"))
print("== best of the rounds:")
print(f"   {'embedder':<28} {'sentences/s':>12} {'per CPU-s':>10} {'vs fp32':>10} {'min cosine':>11}")
for name, b in best.items():
    print(f"   {name:<28} {b['wall']:>12.1f} {b['cpu']:>10.1f} {b['wall'] / w:>9.2f}x {b['cos']:>11}")
if "warren-fp32" not in best:
    sys.exit("no RESULT line from warren")
