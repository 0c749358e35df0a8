"""Renders BENCHMARKS.md from the JSON reports scripts/bench-report collects."""
import json, os, platform, subprocess, sys, datetime
out = sys.argv[1]
def load(name):
    with open(os.path.join(out, name + ".json")) as f:
        return json.load(f)
def cmd(name):
    with open(os.path.join(out, name + ".cmd")) as f:
        return f.read().strip()
def sh(c):
    try:
        return subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip()
    except Exception:
        return "?"
cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
print("# Benchmarks\n")
print("Written by `scripts/bench-report` from one run of `novarpc bench` (release build).")
print("Throughput is operations per second; for casts, fanout and notifications it is")
print("what the servers received per second, end to end. Latencies are client-side.")
print("Ratios are novarpc / raw client, measured in the same run.\n")
print(f"- date: {datetime.datetime.utcnow().strftime('%Y-%m-%d %H:%M UTC')}")
mem_gib = sh("free -g | awk '/Mem:/ {print $2}'")
print(f"- machine: {sh('nproc')} cores ({cpu}), {mem_gib} GiB, {platform.system()} {platform.release()}")
print(f"- broker: RabbitMQ {sh('rabbitmqctl -q version')} on 127.0.0.1 (same machine, shares the cores)")
print(f"- toolchain: {sh('rustc --version')}")
print()
def ms(us): return f"{us/1000:.2f} ms"
retried = []
def row(label, name):
    r = load(name)
    if os.path.exists(os.path.join(out, name + ".retried")):
        retried.append(name)
        label += " †"
    n = r["novarpc"]
    thr = n["delivered_rate"] if n["delivered_rate"] is not None else n["rate"]
    raw = r.get("raw")
    if raw:
        rthr = raw["delivered_rate"] if raw["delivered_rate"] is not None else raw["rate"]
        rawcol = f"{rthr:,.0f}"
        ratio = f"{r['ratio']:.2f}"
        p50 = f"{ms(n['p50_us'])} ({r['p50_ratio']:.2f}x)"
    else:
        rawcol, ratio, p50 = "—", "—", ms(n["p50_us"])
    print(f"| {label} | {thr:,.0f} | {rawcol} | {ratio} | {p50} | {ms(n['p99_us'])} | {ms(n['p999_us'])} | {n['errors']} |")
header = "| workload | novarpc /s | raw /s | ratio | p50 (vs raw) | p99 | p99.9 | errors |\n|---|---|---|---|---|---|---|---|"
print("## memory backend (raw: tokio mpsc + oneshot)\n")
print(header)
for n in (1, 16, 64, 128):
    row(f"call, {n} in flight", f"memory-call-{n}")
row("cast, 64 in flight", "memory-cast")
row("fanout to 3 servers, 64 in flight", "memory-fanout")
print()
print("## kombu backend on RabbitMQ (raw: lapin, hand-written RPC / publishes)\n")
print(header)
for n in (1, 16, 128):
    row(f"call, {n} in flight", f"kombu-call-{n}")
for n in (1, 16, 128):
    if os.path.exists(os.path.join(out, f"kombu-direct-call-{n}.json")):
        row(f"call with direct reply-to (opt-in), {n} in flight", f"kombu-direct-call-{n}")
row("cast with confirms, 64 in flight", "kombu-cast-confirms")
row("cast without confirms, 64 in flight", "kombu-cast-noconfirms")
row("fanout to 3 servers, 64 in flight", "kombu-fanout")
print()
print("## qpid backend, AMQP 1.0 on RabbitMQ's plugin (raw: fe2o3-amqp, hand-written RPC / sends)\n")
print(header)
for n in (1, 16, 128):
    row(f"call, {n} in flight", f"qpid-call-{n}")
row("cast, unsettled (accepted outcome), 64 in flight", "qpid-cast-confirms")
row("cast, pre-settled, 64 in flight", "qpid-cast-noconfirms")
row("fanout to 3 servers, 64 in flight", "qpid-fanout")
print()
print("## 10,000 calls in flight from one client\n")
print("| backend | calls | errors | calls/s | p99 | client RSS growth | peak RSS |")
print("|---|---|---|---|---|---|---|")
for label, name in (("memory (client and server in one process)", "memory-10k"), ("kombu (server in another process)", "kombu-10k"), ("qpid (server in another process)", "qpid-10k")):
    r = load(name); n = r["novarpc"]
    print(f"| {label} | {n['operations']:,} | {n['errors']} | {n['rate']:,.0f} | {ms(n['p99_us'])} | {r['rss_growth_mb']:.1f} MB | {r['peak_rss_mb']:.1f} MB |")
print()
print("## Peers, measured in the same run\n")
print("tarpc: its in-process channel transport (`benches/peers`), against the memory backend.")
print("RustStream: ruststream-lapin 0.7.2 echo RPC over direct reply-to (`benches/peers`), against kombu.")
print("oslo.messaging 18.3.1: its rabbit driver on the same RabbitMQ, threading executor, one")
print("client thread per call in flight (`benches/peers/oslo_bench.py`), against kombu.\n")
print("| workload | novarpc /s | peer /s | novarpc / peer | novarpc p50 | peer p50 |")
print("|---|---|---|---|---|---|")
def exists(name): return os.path.exists(os.path.join(out, name + ".json"))
def peer_row(label, ours, theirs):
    if not (exists(ours) and exists(theirs)):
        return
    n, p = load(ours)["novarpc"], load(theirs)
    a = n["delivered_rate"] if n["delivered_rate"] is not None else n["rate"]
    b = p["delivered_rate"] if p.get("delivered_rate") is not None else p["rate"]
    print(f"| {label} | {a:,.0f} | {b:,.0f} | {a / b:.2f} | {ms(n['p50_us'])} | {ms(p['p50_us'])} |")
peer_row("memory call vs tarpc channel, 1 in flight", "memory-call-1", "peer-tarpc-1")
peer_row("memory call vs tarpc channel, 64 in flight", "memory-call-64", "peer-tarpc-64")
for n in (1, 16, 128):
    peer_row(f"kombu call vs RustStream call, {n} in flight", f"kombu-call-{n}", f"peer-ruststream-{n}")
for n in (1, 16, 128):
    peer_row(f"kombu call with direct reply-to vs RustStream call, {n} in flight", f"kombu-direct-call-{n}", f"peer-ruststream-{n}")
peer_row("kombu call vs oslo.messaging call, 1 in flight", "kombu-call-1", "peer-oslo-call-1")
peer_row("kombu call vs oslo.messaging call, 16 in flight", "kombu-call-16", "peer-oslo-call-16")
peer_row("kombu cast (confirms) vs oslo.messaging cast, 64 in flight, delivered", "kombu-cast-confirms", "peer-oslo-cast")
print()

callgrind = os.path.join(out, "callgrind.md")
if os.path.exists(callgrind):
    print("## Instructions and allocations per call (callgrind, DHAT)\n")
    print("`scripts/callgrind-calls`: `bench --mode call --concurrency 1 --messages N` and 2N")
    print("under valgrind, client and server in one process; per call = (X(2N) − X(N)) / N.\n")
    with open(callgrind) as f:
        print(f.read())
def callgrind_rows():
    """{backend: (instructions, allocations)} from scripts/callgrind-calls' table."""
    rows = {}
    if os.path.exists(callgrind):
        for line in open(callgrind):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 4:
                try:
                    rows[cells[0]] = (float(cells[2]), float(cells[3]))
                except ValueError:
                    pass
    return rows
def check(ok): return "met" if ok else "**missed**"
print("## Targets (issue #12)\n")
cg = callgrind_rows()
if "memory" in cg:
    mi, ma = cg["memory"]
    print(f"- instructions per memory call ≤ 30,000: {mi:,.0f} — {check(mi <= 30000)}")
    print(f"- allocations per memory call ≤ 15: {ma:.1f} — {check(ma <= 15)}")
if "kombu" in cg:
    print(f"- instructions per kombu call ≤ 150,000: {cg['kombu'][0]:,.0f} — {check(cg['kombu'][0] <= 150000)}")
def rate(r):
    n = r["novarpc"]
    return n["delivered_rate"] if n["delivered_rate"] is not None else n["rate"]
rs = {n: rate(load(f"kombu-call-{n}")) / load(f"peer-ruststream-{n}")["rate"] for n in (16, 128)}
print(f"- kombu calls ≥ 1.0× RustStream at 16 / 128 in flight: {rs[16]:.2f} / {rs[128]:.2f} — {check(min(rs.values()) >= 1.0)}")
k1r = load("kombu-call-1")["ratio"]
print(f"- kombu call ≥ 0.95× raw lapin at 1 in flight: {k1r:.2f} — {check(k1r >= 0.95)}")
raw_rows = [f"{d}-{w}" for d in ("kombu", "qpid") for w in ("call-1", "call-16", "call-128", "cast-confirms", "cast-noconfirms")]
below = [(n, load(n)["ratio"]) for n in raw_rows if load(n).get("ratio") is not None and load(n)["ratio"] < 0.9]
print(f"- every kombu and qpid row ≥ 0.9× its raw client: {len(raw_rows) - len(below)} of {len(raw_rows)}"
      + (" (below: " + ", ".join(f"{n} {r:.2f}" for n, r in below) + ")" if below else "")
      + f" — {check(not below)}")
mt = rate(load("memory-call-1")) / load("peer-tarpc-1")["rate"]
print(f"- memory calls ≥ tarpc's channel transport at 1 in flight: {mt:.2f} — {check(mt >= 1.0)}")
for name in ("memory-10k", "kombu-10k"):
    r = load(name)
    print(f"- {name.split('-')[0]}: 10,000 calls in flight, RSS growth < 20 MB: {r['rss_growth_mb']:.1f} MB, {r['novarpc']['errors']} errors — {check(r['rss_growth_mb'] < 20 and r['novarpc']['errors'] == 0)}")
print(f"- no run of the matrix hangs (each bench has a deadline): {'every run finished the first time' if not retried else 'second tries: ' + ', '.join(retried)}")
print()
print("## Earlier targets\n")
k16, k128 = load("kombu-call-16"), load("kombu-call-128")
kc, kn, k1 = load("kombu-cast-confirms"), load("kombu-cast-noconfirms"), load("kombu-call-1")
m64, k10k = load("memory-call-64"), load("kombu-10k")
print(f"- kombu call throughput ≥ 0.9× raw at 16 / 128 in flight: {k16['ratio']:.2f} / {k128['ratio']:.2f} — {check(k16['ratio'] >= 0.9 and k128['ratio'] >= 0.9)}")
print(f"- kombu cast throughput ≥ 0.9× raw (with / without confirms): {kc['ratio']:.2f} / {kn['ratio']:.2f} — {check(kc['ratio'] >= 0.9 and kn['ratio'] >= 0.9)}")
print(f"- kombu sequential call p50 ≤ 1.15× raw: {k1['p50_ratio']:.2f} — {check(k1['p50_ratio'] <= 1.15)}")
print(f"- memory ≥ 300k calls/s with 64 in flight: {m64['novarpc']['rate']:,.0f} — {check(m64['novarpc']['rate'] >= 300000)}")
print(f"- 10,000 calls in flight, all complete, client RSS growth < 20 MB: {k10k['novarpc']['errors']} errors, {k10k['rss_growth_mb']:.1f} MB — {check(k10k['novarpc']['errors'] == 0 and k10k['rss_growth_mb'] < 20)}")
q16, q128, q1 = load("qpid-call-16"), load("qpid-call-128"), load("qpid-call-1")
qc, qn, q10k = load("qpid-cast-confirms"), load("qpid-cast-noconfirms"), load("qpid-10k")
print(f"- qpid call throughput ≥ 0.9× raw at 16 / 128 in flight: {q16['ratio']:.2f} / {q128['ratio']:.2f} — {check(q16['ratio'] >= 0.9 and q128['ratio'] >= 0.9)}")
print(f"- qpid cast throughput ≥ 0.9× raw (unsettled / pre-settled): {qc['ratio']:.2f} / {qn['ratio']:.2f} — {check(qc['ratio'] >= 0.9 and qn['ratio'] >= 0.9)}")
print(f"- qpid sequential call p50 ≤ 1.15× raw: {q1['p50_ratio']:.2f} — {check(q1['p50_ratio'] <= 1.15)}")
print(f"- qpid 10,000 calls in flight, all complete, client RSS growth < 20 MB: {q10k['novarpc']['errors']} errors, {q10k['rss_growth_mb']:.1f} MB — {check(q10k['novarpc']['errors'] == 0 and q10k['rss_growth_mb'] < 20)}")
print()
print("Figures on this 2-core machine drift ±15 % between runs; RabbitMQ shares the cores.\n")
if retried:
    print("† Second try: the first run of " + ", ".join(f"`{n}`" for n in retried)
          + " did not finish within its deadline (exit 4) and was run once more.\n")
print("## Commands\n")
print("```sh")
for name in sorted(f[:-5] for f in os.listdir(out) if f.endswith(".json")):
    print(cmd(name))
print("```")
