"""Configuration: the original's files, its completion rules and defaults,
the new keys, the safety checks on real files, and every validation message."""

import logging
import os

import pytest

from spdu_cli import config
from spdu_cli.config import System
from spdu_cli.errors import ConfigError, UsageError

ALPHA = System(hostname="alpha.domain.tld")


def load(confdir, system=ALPHA):
    return config.load(str(confdir.main), system=system)


def target(confdir, name="beta", system=ALPHA):
    return load(confdir, system).target(name)


def test_every_default_on_alpha_matches_the_original(confdir):
    """`spdu beta` on alpha.domain.tld with an empty file, as the original's README says."""
    confdir.write("")
    t = target(confdir)
    assert t.probe_url == "http://api.domain.tld:80/status"
    assert t.api_name == "api.domain.tld"
    assert t.pool_name == "api.pool.domain.tld"
    assert t.pool_zone == "pool.domain.tld"
    assert str(t.name_server) == "127.0.0.1"
    assert t.name_port == 53
    assert t.name_ttl == 5
    assert t.target_name == "beta.domain.tld"
    assert t.target_ips == ()
    assert t.my_tag == "alpha"
    assert t.mail is None
    assert t.spool_dir == "/var/spool/spdu"
    assert t.interval == 2
    # Our documented choices where the original's sample and script disagree.
    assert t.probe_timeout == 1.5
    assert t.probe_retries == 1
    assert t.settings["mailFrom"].value == "robot@domain.tld"
    assert (t.probe_rise, t.probe_fall) == (2, 2)


def test_a_config_written_the_way_the_originals_users_write_it(confdir):
    confdir.write(
        """
        #!/bin/sh
        # /usr/local/etc/spdu.conf -- SPDU configuration
        domain="domain.tld"
        #nameServer="127.0.0.1"
        nameTTL="5"
        mailTo="ops@domain.tld noc@domain.tld"
        mailFrom="spdu@${domain}"
        myTag="alpha"
        smtpRelay="smtp.${domain}"
        smtpSSL="yes"
        smtpPassword=""
        apiName="api"
        probePath="status?full=1"
        probeTimeout="2.0"
        probeRetries="3"
        loopWait="2"
        probeSSL="yes"
        poolZone="pool"
        poolName="api"
        """
    )
    confdir.write('targetIP="5.6.7.8"\n', target="beta")
    t = target(confdir)
    assert t.probe_url == "https://api.domain.tld:443/status?full=1"
    assert t.target_ips == (config.ipaddress.ip_address("5.6.7.8"),)
    assert t.mail.to == ("ops@domain.tld", "noc@domain.tld")
    assert t.mail.sender == "spdu@domain.tld"
    assert (t.mail.relay, t.mail.port, t.mail.ssl) == ("smtp.domain.tld", 465, True)
    assert t.mail.user == "spdu@domain.tld"
    assert t.probe_retries == 3
    assert t.files == (str(confdir.main), str(confdir.root / "spdu" / "beta"))


def test_per_target_file_overrides_and_sees_main_values(confdir):
    confdir.write('domain=example.org\nprobePort=8080\ntargets="beta gamma"\n')
    confdir.write('probePort=8443\ntargetName="b.${domain}"\n', target="beta")
    site = load(confdir)
    assert site.target("beta").probe_port == 8443
    assert site.target("beta").target_name == "b.example.org"
    assert site.target("gamma").probe_port == 8080
    assert site.target("gamma").target_name == "gamma.example.org"


@pytest.mark.parametrize(
    "text, api, pool, zone, target_name",
    [
        ("apiName=www", "www.domain.tld", "api.pool.domain.tld", "pool.domain.tld",
         "beta.domain.tld"),
        ("apiName=www.example.com", "www.example.com", "api.pool.domain.tld", "pool.domain.tld",
         "beta.domain.tld"),
        ("apiDomain=example.com", "api.example.com", "api.pool.domain.tld", "pool.domain.tld",
         "beta.domain.tld"),
        ("poolZone=dyn", "api.domain.tld", "api.dyn.domain.tld", "dyn.domain.tld",
         "beta.domain.tld"),
        ("poolZone=dyn.example.net", "api.domain.tld", "api.dyn.example.net", "dyn.example.net",
         "beta.domain.tld"),
        ("poolDomain=example.net", "api.domain.tld", "api.pool.example.net", "pool.example.net",
         "beta.domain.tld"),
        ("poolName=www", "api.domain.tld", "www.pool.domain.tld", "pool.domain.tld",
         "beta.domain.tld"),
        # A dotted poolName wins, and its zone is what follows the first label.
        ("poolName=svc.lb.example.org\npoolZone=ignored", "api.domain.tld", "svc.lb.example.org",
         "lb.example.org", "beta.domain.tld"),
        ("targetName=b2", "api.domain.tld", "api.pool.domain.tld", "pool.domain.tld",
         "b2.domain.tld"),
        ("targetDomain=sites.example", "api.domain.tld", "api.pool.domain.tld", "pool.domain.tld",
         "beta.sites.example"),
        ("targetName=beta.example.net.", "api.domain.tld", "api.pool.domain.tld", "pool.domain.tld",
         "beta.example.net"),
    ],
)
def test_completion_rules(confdir, text, api, pool, zone, target_name):
    confdir.write(text + "\n")
    t = target(confdir)
    assert (t.api_name, t.pool_name, t.pool_zone, t.target_name) == (api, pool, zone, target_name)


def test_domain_and_tag_default_from_the_host_name(confdir):
    confdir.write("")
    t = target(confdir, system=System(hostname="delta", fqdn="delta.example.com"))
    assert t.domain == "example.com"
    assert t.my_tag == "delta"
    assert t.api_name == "api.example.com"


def test_no_domain_anywhere_is_a_clear_error(confdir):
    confdir.write("")
    with pytest.raises(ConfigError) as e:
        target(confdir, system=System(hostname="vm", fqdn="vm"))
    assert "domain is not set" in str(e.value)
    assert "'vm'" in str(e.value)
    assert str(confdir.main) in str(e.value)


def test_no_domain_is_fine_when_every_name_is_given(confdir):
    confdir.write("apiName=api.a.example\npoolName=api.pool.a.example\ntargetName=b.a.example\n")
    t = target(confdir, system=System(hostname="vm", fqdn="vm"))
    assert t.domain is None and t.pool_zone == "pool.a.example"


def test_reference_to_an_unset_key_takes_its_default(confdir):
    confdir.write('mailFrom="spdu@${domain}"\nprobeTimeout=$probeTimeout\n')
    t = target(confdir)
    assert t.settings["mailFrom"].value == "spdu@domain.tld"
    assert t.probe_timeout == 1.5


def test_reference_to_unknown_name_is_an_error(confdir):
    confdir.write('spoolDir="$HOME/spool"\n')
    with pytest.raises(ConfigError) as e:
        load(confdir)
    assert f"{confdir.main}:1" in str(e.value)
    assert "$HOME" in str(e.value) and "environment" in str(e.value)


def test_command_substitution_names_file_and_line(confdir):
    confdir.write('domain=x.org\nmyTag="$(hostname -s)"\n')
    with pytest.raises(ConfigError) as e:
        load(confdir)
    assert f"{confdir.main}:2: myTag: command substitution is not allowed" in str(e.value)
    assert "never runs commands" in str(e.value)


def test_new_keys(confdir):
    confdir.write(
        """
        targets="beta gamma"
        spoolDir=/srv/spdu
        namePort=5353
        probeRise=3
        probeFall=4
        selfIP="1.2.3.4 2001:db8::4"
        probeCodes="200-299 301"
        probeMatch='"status":"ok"'
        interval=0.5
        tsigKey="hmac-sha512:alpha-key:c2VjcmV0"
        """,
        mode=0o640,
    )
    site = load(confdir)
    assert site.targets == ("beta", "gamma", "self")  # selfCheck=yes: this site's own service
    t = site.target("gamma")
    assert t.spool_dir == "/srv/spdu" and t.name_port == 5353
    assert (t.probe_rise, t.probe_fall) == (3, 4)
    assert [str(ip) for ip in t.self_ips] == ["1.2.3.4", "2001:db8::4"]
    assert t.accepts(204) and t.accepts(301) and not t.accepts(302)
    assert t.probe_match == '"status":"ok"'
    assert t.interval == 0.5
    assert (t.tsig.name, t.tsig.algorithm) == ("alpha-key", "hmac-sha512")
    assert "c2VjcmV0" not in repr(t)


def test_interval_follows_loopwait(confdir):
    confdir.write("loopWait=3\n")
    assert load(confdir).interval == 3


def test_unknown_key_warns_with_file_line_and_suggestion(confdir, caplog):
    confdir.write("domain=domain.tld\nnameserver=127.0.0.2\n")
    with caplog.at_level(logging.WARNING):
        target(confdir)
    assert f"{confdir.main}:2: unknown key nameserver ignored; did you mean nameServer?" in (
        caplog.text
    )


def test_site_wide_key_in_target_file_warns(confdir, caplog):
    confdir.write("spoolDir=/srv/a\n")
    confdir.write("spoolDir=/srv/b\n", target="beta")
    with caplog.at_level(logging.WARNING):
        t = target(confdir)
    assert t.spool_dir == "/srv/a"
    assert "spool" in caplog.text and "applies to the whole site" in caplog.text


@pytest.mark.parametrize(
    "line, words",
    [
        ("nameServer=localhost", "not an IPv4 or IPv6 address"),
        ("nameServer=256.1.1.1", "not an IPv4 or IPv6 address"),
        ("nameTTL=-1", "not a whole number"),
        ("nameTTL=five", "not a whole number"),
        ("namePort=70000", "out of range"),
        ("probeTimeout=0", "out of range"),
        ("probeTimeout=1,5", "not a decimal number"),
        ("probeRetries=0", "out of range"),
        ("probeSSL=maybe", "expected yes or no"),
        ("mailTo='ops@domain.tld not-an-address'", "'not-an-address'"),
        ("mailFrom=spdu", "not an e-mail address"),
        ("apiName=api_1", "not a valid host name label"),
        ("poolName=-bad", "not a valid host name label"),
        ("domain=nodots", "not a fully qualified name"),
        ("targetIP=5.6.7", "'5.6.7' is not an IPv4 or IPv6 address"),
        ("selfIP='1.2.3.4 ::g'", "'::g'"),
        ("targetIP=fe80::1%eth0", "'fe80::1%eth0' is an IPv6 link-local address"),
        ("targetIP=fe80::1", "'fe80::1' is an IPv6 link-local address"),
        ("selfIP=fe80::1%lo", "link-local"),
        ("targetIP=0.0.0.0", "not the address of one host"),
        ("targetIP=ff02::1", "not the address of one host"),
        ("targetIP=::ffff:0.0.0.0", "not the address of one host"),  # this host, mapped
        ("selfIP=::ffff:224.0.0.1", "not the address of one host"),
        ("targetIP=::ffff:255.255.255.255", "not the address of one host"),
        ("probePath='status page'", "not a URL path"),
        ("spoolDir=spool", "not an absolute path"),
        ("targets='beta ../etc'", "'../etc'"),
        ("probeCodes=2xx", "not an HTTP status code"),
        ("myTag='a\"b'", "not a site tag"),
        ("smtpUser='a\nb'", "control character"),
        ("tsigKey=onlyonepart", "expected [algorithm:]name:secret"),
        ("tsigKey=hmac-foo:k:c2VjcmV0", "unknown TSIG algorithm"),
        ("tsigKey=k:not*base64", "not valid base64"),
    ],
)
def test_each_bad_value_names_file_line_key_and_value(confdir, line, words):
    confdir.write("domain=domain.tld\n" + line + "\n", mode=0o640)
    with pytest.raises(ConfigError) as e:
        load(confdir).check()
    msg = str(e.value)
    key = line.split("=")[0]
    assert f"{confdir.main}:2" in msg
    assert key in msg
    assert words in msg
    if key != "tsigKey":
        assert line.split("=", 1)[1].strip("'").split()[0][:4] in msg


def test_bad_value_in_target_file_names_that_file(confdir):
    confdir.write("")
    path = confdir.write("# c\nprobePort=http\n", target="beta")
    with pytest.raises(ConfigError) as e:
        target(confdir)
    assert f"{path}:2: probePort=http: not a whole number" in str(e.value)


def test_secret_never_in_error_messages(confdir):
    confdir.write("tsigKey=hmac-sha999:k:dG9wc2VjcmV0\n", mode=0o600)
    with pytest.raises(ConfigError) as e:
        target(confdir)
    assert "dG9wc2VjcmV0" not in str(e.value)


# -- safety checks, with real files --------------------------------------------


@pytest.mark.parametrize("mode, who",
                         [(0o664, "group"), (0o646, "others"), (0o666, "group and others")])
def test_writable_by_others_is_refused(confdir, mode, who):
    confdir.write("domain=domain.tld\n", mode=mode)
    with pytest.raises(ConfigError) as e:
        load(confdir)
    msg = str(e.value)
    assert e.value.exit_status == 78
    assert str(confdir.main) in msg and f"writable by {who}" in msg
    assert f"mode {mode:04o}" in msg and f"chmod go-w {confdir.main}" in msg


def test_target_file_writable_by_others_is_refused(confdir):
    confdir.write("")
    path = confdir.write("probePort=81\n", target="beta", mode=0o666)
    with pytest.raises(ConfigError) as e:
        target(confdir)
    assert str(path) in str(e.value)


def test_owned_by_another_user_is_refused(confdir):
    confdir.write("domain=domain.tld\n")
    os.chown(confdir.main, 65534, 65534)
    with pytest.raises(ConfigError) as e:
        load(confdir)
    msg = str(e.value)
    assert "owned by nobody, mode 0644; it must be owned by root" in msg
    assert f"chown root {confdir.main}" in msg


def test_owned_by_another_user_and_writable_names_both_fixes(confdir):
    confdir.write("domain=domain.tld\n", mode=0o664)
    os.chown(confdir.main, 65534, 65534)
    with pytest.raises(ConfigError) as e:
        load(confdir)
    assert "it must be owned by root and it is writable by group" in str(e.value)
    assert f"chown root {confdir.main} && chmod go-w {confdir.main}" in str(e.value)


def test_owned_by_the_running_user_is_accepted(confdir):
    confdir.write("domain=domain.tld\n")
    assert os.stat(confdir.main).st_uid == os.geteuid()
    assert load(confdir).path == str(confdir.main)


@pytest.mark.parametrize("key", ["smtpPassword=hunter2", "tsigKey=k:c2VjcmV0"])
def test_secret_in_a_world_readable_file_is_refused(confdir, key):
    confdir.write("domain=domain.tld\n" + key + "\n", mode=0o644)
    with pytest.raises(ConfigError) as e:
        load(confdir)
    assert "readable by others" in str(e.value) and f"chmod o-r {confdir.main}" in str(e.value)
    assert "hunter2" not in str(e.value)
    confdir.write("domain=domain.tld\n" + key + "\n", mode=0o640)
    assert load(confdir)


def test_missing_main_file(tmp_path):
    with pytest.raises(ConfigError) as e:
        config.load(str(tmp_path / "nope.conf"))
    assert "does not exist" in str(e.value)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ConfigError) as e:
        config.load(str(tmp_path))
    assert "not a regular file" in str(e.value)


def test_binary_garbage_is_refused(confdir):
    confdir.main.write_bytes(b"domain=\xff\xfe\n")
    os.chmod(confdir.main, 0o644)
    with pytest.raises(ConfigError) as e:
        load(confdir)
    assert "not UTF-8" in str(e.value)


def test_config_path_precedence(monkeypatch):
    assert config.config_path(None, {}) == "/usr/local/etc/spdu.conf"
    assert config.config_path(None, {"SPDU_CONFIG": "/e"}) == "/e"
    assert config.config_path("/x", {"SPDU_CONFIG": "/e"}) == "/x"


# -- targets ---------------------------------------------------------------------


def test_select_named_unknown_target(confdir):
    confdir.write('targets="beta"\n')
    site = load(confdir)
    assert site.select([]) == ["beta"]
    assert site.select(["beta", "beta"]) == ["beta"]
    with pytest.raises(UsageError) as e:
        site.select(["gamma"])
    assert "unknown target 'gamma'" in str(e.value) and "known: beta" in str(e.value)
    with pytest.raises(UsageError):
        site.select(["../../etc/passwd"])


def test_target_with_its_own_file_but_not_listed_is_known(confdir):
    """The original's way: `spdu beta` with /usr/local/etc/spdu/beta and no targets list."""
    confdir.write("")
    confdir.write("targetIP=5.6.7.8\n", target="beta")
    assert load(confdir).select(["beta"]) == ["beta"]


def test_no_targets_configured(confdir):
    confdir.write("")
    with pytest.raises(ConfigError) as e:
        load(confdir).select([])
    assert "no targets configured" in str(e.value)


# -- TSIG key files ----------------------------------------------------------------

SECRET = "8Qcd0a2HVxjV6sB7mFcGmKqEXOCqFz4eOI4FlUdd6Ss="


@pytest.mark.parametrize(
    "text, name, alg",
    [
        (f'key "alpha-key" {{\n\talgorithm hmac-sha256;\n\tsecret "{SECRET}";\n}};\n',
         "alpha-key", "hmac-sha256"),
        (f'# knot\nkey:\n  - id: alpha-key\n    algorithm: hmac-sha512\n    secret: {SECRET}\n',
         "alpha-key", "hmac-sha512"),
        (f"hmac-sha384:alpha-key:{SECRET}\n", "alpha-key", "hmac-sha384"),
        (f"alpha-key:{SECRET}\n", "alpha-key", "hmac-sha256"),
    ],
)
def test_tsig_key_file_formats(confdir, text, name, alg):
    keyfile = confdir.root / "alpha.key"
    keyfile.write_text(text)
    os.chmod(keyfile, 0o600)
    confdir.write(f"tsigKeyFile={keyfile}\n")
    t = target(confdir)
    assert (t.tsig.name, t.tsig.algorithm, t.tsig.secret) == (name, alg, SECRET)
    assert SECRET not in repr(t) and SECRET not in t.tsig.describe()


def test_tsig_key_file_readable_by_others_is_refused(confdir):
    keyfile = confdir.root / "alpha.key"
    keyfile.write_text(f"alpha-key:{SECRET}\n")
    os.chmod(keyfile, 0o644)
    confdir.write(f"tsigKeyFile={keyfile}\n")
    with pytest.raises(ConfigError) as e:
        target(confdir)
    assert "readable by others" in str(e.value) and SECRET not in str(e.value)


def test_tsig_key_file_garbage(confdir):
    keyfile = confdir.root / "alpha.key"
    keyfile.write_text("hello\nworld\n")
    os.chmod(keyfile, 0o600)
    confdir.write(f"tsigKeyFile={keyfile}\n")
    with pytest.raises(ConfigError) as e:
        target(confdir)
    assert f"TSIG key file {keyfile}" in str(e.value) and "not a key file" in str(e.value)


def test_a_bad_main_value_is_an_error_even_where_a_target_overrides_it(confdir):
    confdir.write("domain=domain.tld\nprobePort=99999\n")
    confdir.write("probePort=80\n", target="beta")
    with pytest.raises(ConfigError) as e:
        target(confdir)
    assert f"{confdir.main}:2: probePort=99999" in str(e.value)


def test_config_check_refuses_a_scoped_link_local_target(run, confdir):
    confdir.write("domain=domain.tld\ntargets=beta\nselfIP=192.0.2.1\n")
    path = confdir.write('targetIP="fe80::1%eth0"\n', target="beta")
    r = run("config", "check")
    assert r.exit_code == 78
    assert f"{path}:1: targetIP=fe80::1%eth0: 'fe80::1%eth0' is an IPv6 link-local" in r.stderr
    assert r.stderr.count("\n") == 1


def test_an_ipv4_mapped_address_is_its_ipv4_address(confdir):
    """::ffff:192.0.2.5 is 192.0.2.5: probed over IPv4 and published as an A
    record, never as AAAA ::ffff:192.0.2.5 (issue 23)."""
    import ipaddress

    confdir.write("domain=domain.tld\ntargets=beta\nselfIP=::ffff:192.0.2.1\n")
    confdir.write("targetIP='::ffff:192.0.2.5 192.0.2.5 2001:db8::5'\n", target="beta")
    cfg = load(confdir).target("beta")
    assert cfg.target_ips == (ipaddress.IPv4Address("192.0.2.5"),
                              ipaddress.IPv6Address("2001:db8::5"))
    assert cfg.self_ips == (ipaddress.IPv4Address("192.0.2.1"),)


def test_the_help_of_self_ip_and_target_dns_says_what_they_do():
    from spdu_cli.settings import KEYS

    assert "always kept" not in KEYS["selfIP"].help  # not with selfCheck=yes
    assert "selfCheck=yes" in KEYS["selfIP"].help
    assert "server(s)" not in KEYS["targetDNS"].help and "one ADDRESS" in KEYS["targetDNS"].help
