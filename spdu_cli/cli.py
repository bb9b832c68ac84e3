"""The `spdu` command line: parse, call one core function, render.

With clicore (the shared context and the one error boundary, SpduGroup), the
only modules that import click.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from spdu_cli import __version__, config, logsetup, peerwait, render, shell
from spdu_cli.clicore import Context, SpduGroup
from spdu_cli.errors import ExitStatus, SpduError

log = logging.getLogger(__name__)


@click.group(cls=SpduGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "-c",
    "config_path",
    metavar="FILE",
    envvar=config.ENV_VAR,
    help=f"Main configuration file [default: {config.DEFAULT_PATH}; env {config.ENV_VAR}].",
)
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.option("-v", "--verbose", count=True, help="More log output (repeat for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr.")
@click.option("--syslog", "use_syslog", is_flag=True,
              help="Log to syslog (facility daemon, ident spdu) instead of stderr.")
@click.version_option(__version__, "-V", "--version", prog_name="spdu")
@click.pass_context
def cli(ctx: click.Context, config_path, debug, verbose, quiet, use_syslog):
    """Keep a DNS pool honest for a service spread over independent sites.

    Run by cron: probe the peer sites, reconcile the pool on this site's own
    DNS server, mail each change once.

    \b
    Example:
        spdu --config /etc/spdu.conf config show beta
    """
    logsetup.setup(verbose, quiet, use_syslog, warn=False)  # again once the config is read
    ctx.obj = Context(config_path, debug, (verbose, quiet, use_syslog))


LOCK_TIMEOUT = click.option(
    "--lock-timeout", type=click.FloatRange(0, 600), default=5.0, show_default=True,
    metavar="SECONDS", help="How long to wait for the spool lock before exiting 75.",
)


@cli.group("config")
def config_group():
    """Show or check the configuration.

    \b
    Example:
        spdu config check && spdu config show --json | jq .probe_url
    """


@config_group.command("show")
@click.argument("targets", nargs=-1, metavar="[TARGET]...")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per target per line.")
@click.pass_obj
def config_show(obj: Context, targets, as_json):
    """Print each target's effective configuration.

    Every key with its value and where it came from (file and line, or
    default), plus what follows from them: the probe URL and the address it
    connects to, the pool name, zone and name server, the mail recipients.
    Secrets are masked.

    \b
    Example:
        spdu config show beta
    """
    site = obj.site()
    cfgs = [site.target(name) for name in site.select(targets)]
    low = peerwait.site_floor(site, cfgs)
    for cfg in cfgs:
        if as_json:
            click.echo(render.json_line(render.config_json(cfg, low)))
        else:
            click.echo(render.lines(render.config_text(cfg, low)))


@config_group.command("check")
@click.option("--online", is_flag=True, help="Also ask the name server; resolve targetName.")
@click.option("--as", "as_user", metavar="USER", help="The user that runs spdu [default: you].")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: valid, targets, warnings.")
@click.pass_obj
def config_check(obj: Context, online, as_user, as_json):
    """Validate the main file and every target's file; exit 0, 69 or 78.

    Also unknown keys, a spool or key file USER cannot use, a target with
    nothing to probe; with --online, the zone's SOA, the key and the TTLs.

    \b
    Example:
        spdu --config /usr/local/etc/spdu.conf config check --online --as knot
    """
    from spdu_cli import checkconf

    user, obj.strict = checkconf.user_named(as_user), True
    try:
        site = obj.site()
        checked, findings = checkconf.check(site, user, online)
        for f in findings:
            (log.warning if f.warning else log.error)("%s", f.line())
        site.select(())  # no target is 78 here too, as for every command that acts on them
    except SpduError as e:
        if as_json:  # the object says so too; the message and status are as without
            click.echo(render.json_line(render.check_json(
                config.config_path(obj.config_path), [], [], str(e))))
        raise
    if as_json:  # error: the first finding (stderr has every one)
        first = next((f.line() for f in findings if not f.warning), None)
        click.echo(render.json_line(render.check_json(
            site.path, [t.target for t in checked],
            [f.line() for f in findings if f.warning], first)))
    if status := checkconf.status(findings):
        raise click.exceptions.Exit(int(status))
    names = ", ".join(t.target for t in checked) or "no targets"
    log.info("%s is valid (%s)", site.path, names)
    if sys.stderr.isatty() and not as_json:
        click.echo(f"{site.path}: ok ({names})", err=True)


@cli.command("probe")
@click.argument("targets", nargs=-1, metavar="[TARGET]...")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per target per line.")
@LOCK_TIMEOUT
@click.pass_obj
def probe_cmd(obj: Context, targets, as_json, lock_timeout):
    """Health-check targets (default: every one in `targets`) into the spool.

    All targets are probed at once. A target goes down after probeFall
    failed probes in a row and up after probeRise good ones. Prints one line
    per target on a terminal, nothing in a pipe unless --json.
    Exit 0 when every probed target is up, 1 when any is not.

    \b
    Example:
        spdu probe beta && echo "beta is up"
    """
    import spdu_cli.probe.step as probe

    reports = probe.run(obj.site(), targets, lock_timeout=lock_timeout)
    _write_metrics(obj.site())
    if as_json:
        for rep in reports:
            click.echo(render.json_line(rep.to_json()))
    elif _tty():
        click.echo(render.lines(render.probe_lines(reports)))
    if any(rep.spool_error for rep in reports):
        sys.exit(int(ExitStatus.TEMPFAIL))
    if any(rep.health.state.value != "up" for rep in reports):
        sys.exit(int(ExitStatus.TARGET_DOWN))


@cli.command("reconcile")
@click.option("--dry-run", "-n", is_flag=True,
              help="Print the nsupdate script that would be sent; send nothing.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per pool per line.")
@click.option("--probe", "probe_first", is_flag=True,
              help="First probe the targets never probed or not within staleAfter.")
@click.option("--prune", is_flag=True,
              help="Also remove the pool's addresses that are neither selfIP nor any "
                   "target's (a target removed from targets=).")
@LOCK_TIMEOUT
@click.pass_obj
def reconcile_cmd(obj: Context, dry_run, as_json, probe_first, lock_timeout, prune):
    """Make each pool's A/AAAA RRset on its DNS server match the spool.

    Reads the RRsets from nameServer itself, adds the addresses of targets
    that are up, removes those of targets that are down, keeps selfIP and
    every address spdu does not manage, leaves unknown or stale targets
    alone, and never empties a pool. Sends one UPDATE per zone, conditional
    on what was read; sends nothing when DNS already agrees. Addresses of no
    target are named in a warning, and removed only with --prune.

    \b
    Example:
        spdu reconcile --dry-run | nsupdate -k /usr/local/etc/spdu.tsig.key
    """
    from spdu_cli import reconcile

    if probe_first:
        import spdu_cli.probe.step as probe

        probe.run_stale(obj.site(), lock_timeout=lock_timeout)
    plans = reconcile.run(obj.site(), dry_run=dry_run, lock_timeout=lock_timeout, prune=prune)
    if not dry_run:
        _write_metrics(obj.site())
    for p in plans:  # by hand, in a pipe too: a target left alone is never silent
        for target, why in p.decision.left.items():
            log.warning("%s: %s", target, why)
    if as_json:
        for p in plans:
            click.echo(render.json_line(p.to_json()))
    elif dry_run:
        click.echo(render.lines(render.reconcile_script(plans)))
    elif _tty():
        click.echo(render.lines(render.reconcile_lines(plans)))
    if "spdu_cli.trouble" in sys.modules:  # imported to post a DNSSEC notice:
        reconcile.send_notices_by_hand(obj.site(), lock_timeout)  # before the process ends
    errors = [p.error for p in plans if p.error]
    if errors:
        sys.exit(int(errors[0].exit_status))


@cli.command("keygen")
@click.option("--name", metavar="NAME", help="Key name [default: spdu-MYTAG].")
@click.option("--server", "server", type=click.Choice(["knot", "bind", "pdns", "both", "all"]),
              default="both", show_default=True,
              help="Which DNS server's snippet and key file to make (both: Knot and BIND; "
                   "all: also PowerDNS).")
@click.option("--pdns-database", metavar="FILE", default=None,
              help="PowerDNS's gsqlite3 database, in the printed commands "
                   "[default: /var/lib/powerdns/pdns.sqlite3].")
@click.option("--key-file", metavar="FILE",
              help="spdu's key file [default: tsigKeyFile, else spdu.tsig.key beside the "
                   "main configuration file].")
@click.option("--server-dir", metavar="DIR",
              help="Where to write the servers' key files [default: beside --key-file].")
@click.option("--force", is_flag=True, help="Replace existing key files.")
@click.option("--spdu-user", metavar="USER", help="The user that runs spdu [default: you].")
@click.option("--knot-user", metavar="USER", help="The user knotd runs as [default: knot].")
@click.option("--bind-user", metavar="USER", help="The user named runs as [default: bind].")
@click.option("--pdns-user", metavar="USER", help="The user pdns_server runs as [default: pdns].")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object: the key's name, the files, the snippets.")
@click.pass_obj
def keygen_cmd(obj: Context, name, server, key_file, server_dir, force, pdns_database,
               spdu_user, knot_user, bind_user, pdns_user, as_json):
    """Make a TSIG key that may change only this site's pool name (A/AAAA).

    Writes it to spdu's key file (and a one-line twin for knsupdate -k) and a
    file per server, each readable only by the user that needs it, and prints
    the Knot acl / BIND update-policy / PowerDNS commands (PowerDNS cannot
    scope a key: the output says so). The secret is never printed. Not run
    as root, it prints the chown/chmod for root to run.

    \b
    Example:
        spdu keygen --server knot --spdu-user knot >> /etc/knot/knot.conf.spdu
    """
    from spdu_cli import keygen

    site = obj.site()
    site.read_key_file = False  # tsigKeyFile may name the file about to be written
    cfgs = [site.target(n) for n in site.select(())]
    pools = list(dict.fromkeys(keygen.Pool(c.pool_name, c.pool_zone) for c in cfgs))
    configured = cfgs[0].settings["tsigKeyFile"].value
    key_file = os.path.abspath(key_file or configured
                               or str(Path(site.path).parent / "spdu.tsig.key"))
    servers = {"both": ("knot", "bind"), "all": keygen.SERVERS}.get(server, (server,))
    owners, notes = keygen.server_owners(servers, {"knot": knot_user, "bind": bind_user,
                                                   "pdns": pdns_user})
    made = keygen.generate(name or keygen.default_name(cfgs[0].my_tag), key_file,
                           server_dir or str(Path(key_file).parent), servers, pools, force,
                           keygen.owner_for(spdu_user, "--spdu-user"), owners)
    snippets = {s: made.pdns_snippet(pdns_database or keygen.PDNS_DATABASE) if s == "pdns"
                else made.knot_snippet() if s == "knot" else made.bind_snippet()
                for s in servers}
    if as_json:
        done = bool(configured) and key_file == os.path.abspath(configured)
        click.echo(render.json_line(render.keygen_json(made, servers, snippets, done)))
    else:
        for s in servers:
            click.echo(snippets[s])
    for line in [f"spdu: {note}" for note in notes] + made.report():
        click.echo(line, err=True)
    if not configured or key_file != os.path.abspath(configured):
        click.echo(f"spdu: now set tsigKeyFile={key_file} in {site.path}", err=True)


def _write_metrics(site: config.Site) -> None:
    if site.metrics_file:  # the module is loaded only when there is a file to write
        from spdu_cli import metrics

        metrics.write_after_run(site)


def _tty() -> bool:
    return sys.stdout.isatty()


@cli.command("status")
@click.argument("targets", nargs=-1, metavar="[TARGET]...")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per target per line.")
@click.option("--dns", is_flag=True,
              help="Also read each pool from its DNS server and say whether it agrees.")
@click.option("--peers", is_flag=True,
              help="Show what every site's DNS serves (the peer views) and where they differ.")
@click.pass_obj
def status_cmd(obj: Context, targets, as_json, dns, peers):
    """Show each target's state, since when, last probe, pending mail and maintenance.

    Reads the spool only, unless --dns: then each pool is read from its DNS
    server as reconcile would, and the change it would make is shown (nothing
    is sent); then every authoritative server of the pool zone (its NS set,
    or secondaryServers) with its serial, whether its pool matches the
    primary's, and how long a lagging one has lagged. A table on a terminal,
    aligned lines in a pipe. Exit 0, also when DNS does not agree; with --dns,
    a pool that cannot be read gives reconcile's exit status (69, 78).

    --peers: each site's view (its pool, read from its own DNS server) as the
    cron loop last read it, or read now when no loop has lately; which sites
    each serves, since when, where they disagree, and changes this site keeps
    making again (another writer of the zone). TARGET: only what the views
    say of those sites; not with --dns (2). peerViews=no: no view is read,
    only the flip-flops are shown. Exit 0.

    \b
    Example:
        spdu status --dns
    """
    import time

    from spdu_cli import status

    now = time.time()
    if peers:
        from spdu_cli import peerreport

        if dns:
            raise click.UsageError("--dns does not go with --peers (the views are read from"
                                   " each site's own DNS server already)")
        rep = peerreport.report(obj.site(), now, tuple(targets))
        if as_json:
            click.echo(render.json_line(rep))
        elif _tty():
            if rep["sites"]:  # none with peerViews=no
                click.echo(render.table(*render.peers_rows(rep)))
            click.echo(render.lines(render.peers_notes(rep)))
        else:
            click.echo(render.lines(render.peers_lines(rep)))
        return
    site = obj.site()
    if not os.path.isdir(site.spool_dir):  # every target "never probed": say why
        log.warning("spoolDir %s does not exist: nothing has been probed here yet (the first"
                    " run makes it; is spoolDir right?)", site.spool_dir)
    statuses = status.collect(site, targets, dns=dns, now=now)
    if as_json:
        for s in statuses:
            click.echo(render.json_line(s.to_json()))
    elif _tty():
        headers = render.status_headers(statuses, dns)
        click.echo(render.table(headers, render.status_rows(statuses, now, dns, table=True)))
    else:
        click.echo(render.lines(render.status_lines(statuses, now, dns)))
    if dns and not as_json:
        for line in render.server_lines(statuses, now):
            click.echo(line)
    failed = [s.dns.exit_status for s in statuses if s.dns and s.dns.error]
    if failed:
        sys.exit(failed[0])


def _duration(ctx, param, value):
    from spdu_cli import maint

    try:
        return maint.parse_duration(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@cli.command("maint")
@click.argument("target")
@click.option("--for", "seconds", default="1h", show_default=True, metavar="DURATION",
              callback=_duration,
              help="How long: 90s, 30m, 2h, 1d or plain seconds; at most 7d.")
@click.option("--reason", default="", metavar="TEXT", help="Why, for the mail and status.")
@click.option("--clear", is_flag=True, help="End the maintenance now.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: the target afterwards.")
@click.option("--probe", "probe_after", is_flag=True,
              help="With --clear: probe TARGET now if stale, so reconcile can put it back.")
@LOCK_TIMEOUT
@click.pass_obj
def maint_cmd(obj: Context, target, seconds, reason, clear, probe_after, lock_timeout, as_json):
    """Take TARGET out of the pool on purpose, for a while (or --clear it).

    Reconcile removes its addresses while probes go on (the pool is never
    emptied, selfIP stays); notify mails the start and the end. It ends by
    itself after --for; again while in maintenance sets a new end.

    \b
    Example:
        spdu maint beta --for 2h --reason "kernel upgrade"
    """
    from spdu_cli import maint

    site = obj.site()
    if probe_after and not clear:
        raise click.UsageError("--probe goes with --clear (spdu maint beta --clear --probe)")
    if clear:
        import spdu_cli.probe.step as probe

        out = probe.clear_maint(site, target, probe_after, lock_timeout)
        said = "is back from maintenance" if out.change else "was not in maintenance"
        line = f"{out.target} {said}: {out.state}"
    else:
        out = maint.start(site, target, seconds, reason, lock_timeout=lock_timeout)
        line = f"{out.target} is in maintenance until {render.stamp(out.maint.until)}"
    _write_metrics(site)
    if as_json:
        click.echo(render.json_line(out.to_json()))
    elif _tty():
        click.echo(line)


@cli.command("history")
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="One JSON object with every transition.")
@click.pass_obj
def history_cmd(obj: Context, target, as_json):
    """Show TARGET's transitions, newest first, with the time spent in each state.

    The last line gives the availability over the period the journal covers:
    the share of time up among the time up or down (maintenance and unknown
    are not counted).

    \b
    Example:
        spdu history beta | tail -1
    """
    from spdu_cli import history
    from spdu_cli.spool import Spool

    site = obj.site()
    [target] = site.select([target])
    site.target(target)  # its file is refused here as by every other command
    h = history.of_entry(Spool(site.spool_dir).read(target))
    if as_json:
        click.echo(render.json_line(h.to_json()))
        return
    rows = render.history_rows(h)
    if _tty() and rows:
        click.echo(render.table(render.HISTORY_HEADERS, rows))
    elif rows:
        click.echo(render.lines(render.aligned(rows)))
    click.echo(render.availability_line(h))


@cli.command("notify")
@click.option("--dry-run", "-n", is_flag=True,
              help="Print the mails and webhook POSTs that would be sent; send, log and"
                   " mark nothing.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per mail and per webhook POST, one a line.")
@LOCK_TIMEOUT
@click.pass_obj
def notify_cmd(obj: Context, dry_run, as_json, lock_timeout):
    """Mail each state change in the spool once, to every address in mailTo,
    and post it once to each webhookURL.

    Several pending changes go out as one digest; a target that changes more
    than flapCount times within flapWindow gets one summary per window. A
    change is marked for a channel only after the relay accepted its mail (a
    webhook answered 2xx), so an outage (exit 69) delays that channel and
    loses nothing; a crash in between may repeat a message. A webhook that
    refuses (4xx) keeps the change pending too (exit 78). Each change is also
    logged to syslog (daemon) once. Without mailTo and webhookURL, changes
    are only logged.

    \b
    Example:
        spdu notify --dry-run | less
    """
    import spdu_cli.notify.step as notify

    outcome = notify.run(obj.site(), dry_run=dry_run, lock_timeout=lock_timeout)
    if not dry_run:
        _write_metrics(obj.site())
    if as_json:
        for d in [*outcome.deliveries, *outcome.posts]:
            click.echo(render.json_line(d.to_json()))
        for h in outcome.plan.held:
            click.echo(render.json_line(notify.held_json(h)))
        for n in outcome.notices:
            click.echo(render.json_line(n.to_json()))
    elif dry_run:
        if outcome.deliveries or outcome.posts or outcome.notices:
            click.echo(render.lines(render.notify_messages(outcome)))
        for line in render.notify_unmailed(outcome):  # say why nothing is mailed
            click.echo(line)
    elif _tty():
        click.echo(render.lines(render.notify_lines(outcome)))
    else:  # in a pipe too: a change held back is never silent
        click.echo("".join(f"{line}\n" for line in render.notify_held(outcome)), nl=False)
    if outcome.errors:
        sys.exit(int(outcome.errors[0].exit_status))


@cli.command("cron")
@click.option("--for", "seconds", type=click.FloatRange(1, 3600), default=60.0,
              show_default=True, metavar="SECONDS", envvar="SPDU_CRON_FOR",
              help="How long to loop [env SPDU_CRON_FOR].")
@click.option("--follow/--no-follow", default=False, show_default=True,
              help="Go on for another --for each time the next copy that cron starts"
                   " finds this loop running, up to an hour (spdu-cron sets it).")
@click.option("--json", "as_json", is_flag=True,
              help="At the end, one JSON object: what the loop did.")
@LOCK_TIMEOUT
@click.pass_obj
def cron_cmd(obj: Context, seconds, lock_timeout, follow, as_json):
    """Probe, reconcile and mail every `interval` seconds for a minute.

    What cron runs every minute (spdu-cron is `spdu --syslog cron --follow`):
    one process runs the three steps in turn, probing a suspect target again
    after fastInterval, mailing from the background so a slow relay never
    delays a probe or a DNS update. A second copy leaves a note for the
    running one, which covers its minute too, and exits 75. With --follow, a
    loop waits up to 5 s past its minute for that copy, so one process serves
    minute after minute for as long as cron starts copies (a new one after
    an hour, or at the end of the minute when spdu was upgraded); a copy then
    costs little more than Python's start-up. A failing step does not stop
    the others; the exit status says what still failed at the end, 0 when
    nothing did. spdu-cron takes spdu's global options too, before its own
    (`spdu-cron -c FILE -v --for 10`; spdu --help lists them).

    \b
    Example:
        spdu -v cron --for 10     # by hand, ten seconds
        # crontab: * * * * * knot /usr/local/bin/spdu-cron
    """
    from spdu_cli import cycle
    from spdu_cli.looplock import LoopRunning

    site = obj.site()  # errors at start exit here (78); and syslog goes to syslogSocket
    path = config.config_path(obj.config_path)
    try:
        tally = cycle.run(lambda: config.load(path), path, seconds, lock_timeout, site,
                          follow=follow)
    except LoopRunning as e:
        if not obj.logging[2]:
            raise
        log.info("%s", e)  # under cron: the usual hand-over, not a mail every minute
        sys.exit(int(e.exit_status))
    if as_json:
        click.echo(render.json_line(render.tally_json(tally)))
    if tally.last_error is not None:
        sys.exit(int(tally.last_error))


def cron_main() -> None:
    """`spdu --syslog [GLOBAL OPTIONS] cron --follow [CRON OPTIONS]`: spdu-cron
    when no loop was running to take its minute (cronstart.main). Its help is
    that of the cron command, under spdu-cron's own name."""
    args = shell.cron_args(sys.argv[1:], cron_cmd.params)
    if "--help" in args[args.index("cron"):]:
        cron_cmd.main(["--help"], prog_name="spdu-cron")
    cli.main(args, prog_name="spdu-cron")


def main() -> None:
    cli(prog_name="spdu")
