"""
The benchmark package (benchmarks/txbench): its parsers fed with output
recorded on this machine (benchmarks/recorded/), the /proc readers, the
spread of --workers, the target checks, and the command lines it builds.
Nothing here starts a process or runs load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.txbench import checks, memory, parsers, procfs, spread
from benchmarks.txbench.checks import Measurements, RatioGoal
from benchmarks.txbench.context import Context, Target
from benchmarks.txbench.load import Run, loadCommand
from benchmarks.txbench.options import parseArguments
from benchmarks.txbench.processes import Processes
from benchmarks.txbench.scenarios import CSS_SIZE, SCENARIOS, styleSheet
from benchmarks.txbench.selection import chooseTargets
from benchmarks.txbench.tables import VERDICT_COLUMNS, rstTable, verdictCells
from benchmarks.txbench.targets import anchors
from benchmarks.txbench.targets.txfastcgi import embeddedCommand, proxyCommand

RECORDED = Path(__file__).resolve().parent.parent / "benchmarks" / "recorded"


def recorded(name: str) -> str:
    return (RECORDED / name).read_text()


def scenario(name: str):
    return next(s for s in SCENARIOS if s.name == name)


# --- parsers ---------------------------------------------------------------


def test_wrk_output_gives_requests_rate_and_percentiles():
    result = parsers.parseWrk(recorded("wrk-tiny-c32.txt"))
    assert result["requests"] == 27774
    assert result["seconds"] == 2.0
    assert result["rps"] == 13878.27
    assert result["p50ms"] == pytest.approx(2.19)
    assert result["p99ms"] == pytest.approx(4.64)
    assert result["meanMs"] == pytest.approx(2.30)
    assert (result["non2xx"], result["socketErrors"]) == (0, 0)


def test_wrk_latencies_in_microseconds_and_counted_non_2xx():
    result = parsers.parseWrk(recorded("wrk-non2xx.txt"))
    assert result["p50ms"] == pytest.approx(0.324)
    assert result["p99ms"] == pytest.approx(0.625)
    assert result["non2xx"] == result["requests"] == 179512


def test_wrk_run_of_a_fraction_of_a_second_longer_than_asked():
    result = parsers.parseWrk(recorded("wrk-1m-c256.txt"))
    assert result["seconds"] == pytest.approx(2.05)
    assert result["p99ms"] == pytest.approx(491.58)


def test_wrk_that_could_not_connect_is_an_error_not_zero():
    with pytest.raises(RuntimeError, match="wrk printed no result"):
        parsers.parseWrk(recorded("wrk-refused.txt"))


def test_h2load_output_gives_requests_and_rate_but_no_percentiles():
    result = parsers.parseH2load(recorded("h2load-tiny-c32.txt"))
    assert result["requests"] == 21943
    assert result["rps"] == 10971.50
    assert result["seconds"] == 2.0
    assert (result["non2xx"], result["socketErrors"]) == (0, 0)
    assert result["p99ms"] is None


def test_h2load_log_gives_percentiles():
    # The first 200 lines of the --log-file of the run above.
    result = parsers.parseH2loadLog(recorded("h2load-log.tsv"))
    assert result == {"p50ms": pytest.approx(35.265), "p99ms": pytest.approx(41.671)}


def test_percentile_is_nearest_rank():
    values = [float(n) for n in range(100, 0, -1)]
    assert parsers.percentile(values, 0.99) == 99.0
    assert parsers.percentile(values, 0.5) == 50.0
    assert parsers.percentile([], 0.99) is None


# --- /proc -----------------------------------------------------------------


def test_stat_ticks_and_parent_even_with_parentheses_in_the_name():
    text = recorded("proc-stat.txt")
    expected = json.loads(recorded("proc-expected.json"))
    # utime 4, stime 4, cutime 3, cstime 4 in the recorded line.
    assert procfs.ticksFromStat(text) == 15
    odd = text.replace("(python3)", "(a) b (c)")
    assert procfs.ticksFromStat(odd) == 15
    assert int(procfs.statFields(odd)[1]) == expected["ppid"]


def test_status_kB_lines():
    text = recorded("proc-status.txt")
    assert procfs.kBFromStatus(text, "VmRSS") == 14828
    assert procfs.kBFromStatus(text, "NoSuchKey") == 0


def test_net_tcp_sockets_and_fd_inodes_match_what_python_saw():
    expected = json.loads(recorded("proc-expected.json"))
    sockets = procfs.parseNetTCP(recorded("proc-net-tcp.txt"))
    listening = [s.inode for s in sockets if s.state == procfs.TCP_LISTEN]
    assert listening == [expected["listening"]]
    serverSide = sorted(
        s.inode
        for s in sockets
        if s.localPort == expected["port"] and s.state == procfs.TCP_ESTABLISHED
    )
    assert serverSide == expected["established"]
    inodes = procfs.socketInodes(recorded("proc-fd-links.txt").splitlines())
    assert inodes == {expected["listening"], *expected["established"], *expected["clients"]}


# --- the spread of --workers -----------------------------------------------


def test_connections_counted_per_process_from_recorded_tables():
    expected = json.loads(recorded("proc-expected.json"))
    sockets = procfs.parseNetTCP(recorded("proc-net-tcp.txt"))
    inodes = {7: procfs.socketInodes(recorded("proc-fd-links.txt").splitlines())}
    assert spread.connectionCounts(7, inodes, sockets, expected["port"]) == {7: 3}


def test_a_supervisor_that_accepts_nothing_is_no_worker():
    port = 8080
    sockets = [
        procfs.TCPSocket(port, procfs.TCP_LISTEN, 1),
        *(procfs.TCPSocket(port, procfs.TCP_ESTABLISHED, n) for n in (10, 11, 12)),
        procfs.TCPSocket(40000, procfs.TCP_ESTABLISHED, 13),
    ]
    inodes = {100: {1}, 101: {1, 10, 11}, 102: {1, 12}, 103: {13}}
    assert spread.connectionCounts(100, inodes, sockets, port) == {101: 2, 102: 1}


@pytest.mark.parametrize(
    "counts, expected, even",
    [
        ({1: 16, 2: 16}, [0.5, 0.5], True),
        ({1: 21, 2: 11}, [21 / 32, 11 / 32], True),
        ({1: 22, 2: 10}, [22 / 32, 10 / 32], False),
        ({1: 32}, [1.0, 0.0], False),
        ({1: 32, 2: 0}, [1.0, 0.0], False),
    ],
)
def test_shares_between_a_third_and_two_thirds(counts, expected, even):
    shares = spread.shares(counts, workers=2)
    assert shares == pytest.approx(expected)
    assert spread.evenlySpread(shares) is even


# --- memory ----------------------------------------------------------------


def test_rss_flatness_compares_the_peaks_of_the_first_and_last_thirds():
    flat = [(float(t), 60_000 + (t % 3) * 100) for t in range(60)]
    growing = [(float(t), 60_000 + t * 300) for t in range(60)]
    assert memory.rssFlatness(flat)["ratio"] == pytest.approx(1.0)
    assert memory.rssFlatness(growing)["ratio"] == pytest.approx(
        (60_000 + 59 * 300) / (60_000 + 19 * 300)
    )


@pytest.mark.parametrize(
    "data, complete",
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", False),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", False),
        (b"HTTP/1.1 200 OK\r\nContent-Len", False),
    ],
)
def test_idle_client_knows_when_its_one_response_is_complete(data, complete):
    assert memory.responseComplete(data) is complete


# --- target checks ---------------------------------------------------------


def run(
    scenarioName: str,
    target: str,
    rps: float,
    round: int = 1,
    p99ms: float | None = 1.0,
    cpuSeconds: float = 1.0,
    perProcess: list[int] | None = None,
) -> Run:
    return Run(
        scenario=scenarioName,
        target=target,
        round=round,
        requests=int(rps),
        seconds=1.0,
        rps=rps,
        p50ms=None,
        p99ms=p99ms,
        non2xx=0,
        socketErrors=0,
        cpuSeconds=cpuSeconds,
        peakRSSMB=10.0,
        connections=scenario(scenarioName).connections,
        connectionsPerProcess=perProcess,
    )


CPYTHON = {"txfastcgi": "CPython", "txfastcgi-embedded": "CPython", "txfastcgi-w2": "CPython"}
NGINX_GOAL = checks.RATIO_GOALS[0]


def test_ratio_pass_and_miss_are_medians_of_same_round_ratios():
    runs = [
        run("tiny-c32", "txfastcgi", 9500, 1),
        run("tiny-c32", "nginx", 10000, 1),
        run("tiny-c32", "txfastcgi", 4000, 2),
        run("tiny-c32", "nginx", 4000, 2),
        run("tiny-c32", "txfastcgi", 8000, 3),
        run("tiny-c32", "nginx", 10000, 3),
    ]
    verdict = checks.ratioVerdict(NGINX_GOAL, Measurements(runs, CPYTHON))
    assert (verdict.measured, verdict.required, verdict.status) == ("0.95x", ">= 0.90x", "PASS")
    slower = [r for r in runs if r.round != 2]
    verdict = checks.ratioVerdict(NGINX_GOAL, Measurements(slower, CPYTHON))
    assert (verdict.measured, verdict.status) == ("0.88x", "MISS")


def test_a_round_in_which_the_peer_stalled_is_left_out_of_the_ratio():
    # HAProxy answered 15 requests in one round of a real run: 1894x then.
    runs = [
        run("tiny-c32", "txfastcgi", 7085, 1),
        run("tiny-c32", "nginx", 3.74, 1),
        run("tiny-c32", "txfastcgi", 6622, 2),
        run("tiny-c32", "nginx", 17389, 2),
    ]
    verdict = checks.ratioVerdict(NGINX_GOAL, Measurements(runs, CPYTHON))
    assert (verdict.measured, verdict.status) == ("0.38x", "MISS")


def test_a_missing_anchor_is_not_measured_never_a_pass():
    runs = [run("tiny-c32", "txfastcgi", 50000), run("tiny-c32", "caddy", 100)]
    verdict = checks.ratioVerdict(NGINX_GOAL, Measurements(runs, CPYTHON))
    assert (verdict.measured, verdict.status) == ("-", "not measured")
    assert "nginx" in verdict.detail


def test_cpython_targets_need_cpython_and_the_pypy_target_pypy():
    runs = [run("tiny-c32", "txfastcgi", 50000), run("tiny-c32", "nginx", 100)]
    onPyPy = Measurements(runs, {"txfastcgi": "PyPy"})
    assert checks.ratioVerdict(NGINX_GOAL, onPyPy).status == "not measured"
    pypyGoal = next(g for g in checks.RATIO_GOALS if g.mine == "txfastcgi-pypy")
    runs = [run("tiny-c32", "txfastcgi-pypy", 31000), run("tiny-c32", "haproxy", 30000)]
    verdict = checks.ratioVerdict(pypyGoal, Measurements(runs, {"txfastcgi-pypy": "PyPy"}))
    assert (verdict.measured, verdict.status) == ("1.03x", "PASS")


def test_cpu_goal_is_an_upper_bound():
    goal = RatioGoal("cpu", "static1m-c32", "txfastcgi", "nginx", 2.0, False, "cpuMicroseconds")
    runs = [
        run("static1m-c32", "txfastcgi", 1000, cpuSeconds=0.25),
        run("static1m-c32", "nginx", 1000, cpuSeconds=0.1),
    ]
    verdict = checks.ratioVerdict(goal, Measurements(runs, CPYTHON))
    assert (verdict.measured, verdict.required, verdict.status) == ("2.50x", "<= 2.00x", "MISS")


def test_c1_no_worse_relative_to_nginx_than_c32():
    runs = [
        run("tiny-c32", "txfastcgi", 900),
        run("tiny-c32", "nginx", 1000),
        run("tiny-c1", "txfastcgi", 450),
        run("tiny-c1", "nginx", 600),
    ]
    verdict = checks.relativeVerdict("c1", "tiny-c1", Measurements(runs, CPYTHON))
    assert (verdict.measured, verdict.status) == ("0.83x", "MISS")


def test_p99_needs_every_c32_scenario():
    c32 = [s.name for s in SCENARIOS if s.connections == 32]
    runs = [
        run(name, target, 100, p99ms=p99)
        for name in c32
        for target, p99 in (("txfastcgi", 3.0), ("nginx", 2.0))
    ]
    verdict = checks.p99Verdict(Measurements(runs, CPYTHON))
    assert (verdict.measured, verdict.status) == ("1.50x", "PASS")
    partial = [r for r in runs if r.scenario != "h2-tiny-c32"]
    verdict = checks.p99Verdict(Measurements(partial, CPYTHON))
    assert verdict.status == "not measured"
    assert "h2-tiny-c32" in verdict.detail


def soak(seconds: float, ratio: float) -> dict[str, Any]:
    return {
        "target": "txfastcgi",
        "seconds": seconds,
        "firstKB": 60_000,
        "lastKB": 60_000 * ratio,
        "ratio": ratio,
    }


def test_rss_flat_needs_sixty_seconds():
    assert checks.rssVerdict(Measurements([], soak=soak(60, 1.05))).status == "PASS"
    assert checks.rssVerdict(Measurements([], soak=soak(60, 1.2))).status == "MISS"
    assert checks.rssVerdict(Measurements([], soak=soak(10, 1.0))).status == "not measured"
    assert checks.rssVerdict(Measurements([])).status == "not measured"


def idle(count: int, held: int, perKiB: float) -> dict[str, Any]:
    return {
        "target": "txfastcgi",
        "connections": count,
        "heldByServer": held,
        "beforeKB": 60_000,
        "afterKB": 60_000 + perKiB * count,
        "perConnectionKiB": perKiB,
    }


def test_idle_connections_need_ten_thousand_held_by_the_server():
    verdict = checks.idleVerdict(Measurements([], idle=idle(10_000, 10_000, 7.5)))
    assert (verdict.measured, verdict.required, verdict.status) == (
        "7.50 KiB",
        "<= 10.00 KiB",
        "PASS",
    )
    assert checks.idleVerdict(Measurements([], idle=idle(10_000, 10_000, 12))).status == "MISS"
    # A server that closed idle connections is not credited with their memory.
    closed = Measurements([], idle=idle(10_000, 4_000, 1.0))
    assert checks.idleVerdict(closed).status == "not measured"
    assert checks.idleVerdict(Measurements([], idle=idle(500, 500, 1.0))).status == "not measured"


def test_spread_must_hold_in_every_round():
    even = [run("tiny-c32", "txfastcgi-w2", 100, r, perProcess=[17, 15]) for r in (1, 2)]
    verdict = checks.spreadVerdict(Measurements(even))
    assert (verdict.measured, verdict.status) == ("0.47..0.53", "PASS")
    bimodal = [*even, run("tiny-c32", "txfastcgi-w2", 100, 3, perProcess=[32])]
    verdict = checks.spreadVerdict(Measurements(bimodal))
    assert (verdict.measured, verdict.status) == ("0.00..1.00", "MISS")
    assert "round 3" in verdict.detail
    assert checks.spreadVerdict(Measurements([])).status == "not measured"


def test_every_target_of_the_issue_is_a_row_and_an_empty_run_passes_none():
    rows = checks.verdicts(Measurements([]))
    assert len(rows) == 18
    assert {row.status for row in rows} == {"not measured"}
    table = rstTable(VERDICT_COLUMNS, [verdictCells(row) for row in rows])
    assert "PyPy, tiny c32: >= 1.0x HAProxy" in table
    assert "One CPython process, tiny response, c32: >= 0.9x nginx (1 worker)" in table


# --- command lines ---------------------------------------------------------


def test_proxy_command_line_with_workers_tls_and_pass_through_arguments(tmp_path):
    args = parseArguments(
        ["--txfastcgi-args", "--front dedicated --max-connections 4", "--proxy-arg=--no-compress"]
    )
    argv = proxyCommand(
        "/usr/bin/pypy3",
        tmp_path / "php.sock",
        tmp_path / "www",
        8080,
        args.proxyArgs,
        workers=2,
    )
    assert argv[:4] == ["/usr/bin/pypy3", "-m", "twisted", "fastcgi-proxy"]
    assert argv[4:8] == [
        "--php-fpm",
        f"unix:{tmp_path / 'php.sock'}",
        "--path",
        str(tmp_path / "www"),
    ]
    assert "tcp:8080:interface=127.0.0.1" in argv
    assert argv[-7:] == [
        "--workers",
        "2",
        "--no-compress",
        "--front",
        "dedicated",
        "--max-connections",
        "4",
    ]
    tls = proxyCommand(
        "python",
        tmp_path / "s",
        tmp_path,
        1,
        (),
        1,
        (8443, (tmp_path / "k.pem", tmp_path / "c.pem")),
    )
    assert (
        f"ssl:8443:interface=127.0.0.1:privateKey={tmp_path / 'k.pem'}:certKey="
        f"{tmp_path / 'c.pem'}" in tls
    )
    assert "--workers" not in tls


def test_python_option_is_the_interpreter_of_the_txfastcgi_targets():
    args = parseArguments(["--python", "/opt/pypy/bin/pypy3", "--quick"])
    assert args.python == "/opt/pypy/bin/pypy3"
    assert (args.rounds, args.soak, args.idle_connections) == (1, 0.0, 0)
    assert parseArguments([]).idle_connections == 10_000


def test_embedded_target_runs_the_plain_site_script(tmp_path):
    argv = embeddedCommand("python3", tmp_path / "php.sock", tmp_path / "www", 9000)
    assert Path(argv[1]).name == "embedded_site.py" and Path(argv[1]).exists()
    assert argv[2:] == [str(tmp_path / "php.sock"), str(tmp_path / "www"), "9000"]


def test_load_commands_h2load_with_16_streams_and_wrk_posting(tmp_path):
    tools = {"wrk": "/usr/bin/wrk", "h2load": "/usr/bin/h2load"}
    target = Target("t", "", 1, 8080, tlsPort=8443)
    h2 = loadCommand(tools, tmp_path, scenario("h2-tiny-c32"), target, 4)
    assert h2 == [
        "/usr/bin/h2load",
        "-t1",
        "-c32",
        "-m16",
        "-D4",
        f"--log-file={tmp_path / 'h2load.log'}",
        "https://127.0.0.1:8443/hello.php",
    ]
    post = loadCommand(tools, tmp_path, scenario("post1m-c32"), target, 2.5)
    assert post == [
        "/usr/bin/wrk",
        "-t1",
        "-c32",
        "-d2.5s",
        "--latency",
        "-s",
        str(tmp_path / "post.lua"),
        "http://127.0.0.1:8080/post.php",
    ]


def anchorSite(tmp_path: Path) -> anchors.AnchorSite:
    return anchors.AnchorSite(
        "/usr/sbin/x",
        tmp_path,
        tmp_path / "www",
        tmp_path / "php.sock",
        8085,
        tmp_path / "error.log",
    )


def test_haproxy_keeps_fastcgi_connections_and_serves_no_files(tmp_path):
    launch = anchors.haproxy(anchorSite(tmp_path))
    assert launch.argv == ["/usr/sbin/x", "-db", "-f", str(tmp_path / "haproxy.cfg")]
    assert launch.servesFiles is False
    config = (tmp_path / "haproxy.cfg").read_text()
    assert f"server php unix@{tmp_path / 'php.sock'} proto fcgi maxconn 4" in config
    assert "option keep-conn" in config and "bind 127.0.0.1:8085" in config


def test_h2o_and_lighttpd_configurations(tmp_path):
    site = anchorSite(tmp_path)
    assert anchors.h2o(site).argv == ["/usr/sbin/x", "-c", str(tmp_path / "h2o.conf")]
    assert (
        f"port: {tmp_path / 'php.sock'}\n            type: unix"
        in (tmp_path / "h2o.conf").read_text()
    )
    assert anchors.lighttpd(site).argv[:2] == ["/usr/sbin/x", "-D"]
    config = (tmp_path / "lighttpd.conf").read_text()
    assert '"^/[^?]*\\.php(/[^?]*)?(\\?.*)?$" => "$0"' in config
    assert f'"socket" => "{tmp_path / "php.sock"}"' in config


def test_nginx_serves_files_with_sendfile(tmp_path):
    launch = anchors.nginx(anchorSite(tmp_path))
    assert "sendfile on;" in (tmp_path / "nginx.conf").read_text()
    assert launch.servesFiles


def test_missing_anchors_are_left_out_with_the_line_that_installs_them(tmp_path):
    args = parseArguments(["--targets", "txfastcgi,nginx,haproxy,h2o,txfastcgi-pypy"])
    context = Context(
        tmp_path, tmp_path, {"nginx": "/usr/sbin/nginx"}, Processes(), {}, "python3", tmp_path, None
    )
    notes: list[str] = []
    assert chooseTargets(args, context, notes) == ["txfastcgi", "nginx"]
    assert notes == [
        "haproxy: left out, haproxy is not installed (apt-get install -y haproxy)",
        "h2o: left out, h2o is not installed (apt-get install -y h2o)",
        "txfastcgi-pypy: left out, no PyPy (apt-get install -y pypy3, or --pypy PATH)",
    ]


def test_the_style_sheet_stand_in_has_the_size_of_wordpress_s():
    css = styleSheet(CSS_SIZE)
    assert len(css) == CSS_SIZE == 97_000
    assert css.startswith(b".wp-block-") and css.endswith(b"\n")
