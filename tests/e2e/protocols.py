"""What runs per protocol: the server, the training tool set (captured, learned from) and
the test tool set (run twice against the real server and once against the emulator).

The test set asks with other user names, paths and keys than the training set wherever
the tool takes them, so an identical answer means the model generalised rather than
replayed. Tools and arguments follow /work/shared/corpus/dev/<protocol>/*.cmds.jsonl."""

from __future__ import annotations

from dataclasses import dataclass, field

from tests.e2e.servers import TEST_USER, TRAIN_USER

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Tool:
    label: str
    argv: list[str]
    stdin: str | None = None
    timeout: float = 30.0
    files: dict[str, str] = field(default_factory=dict)  # written into its directory first


@dataclass(frozen=True)
class Protocol:
    name: str
    ports: list[int]
    binaries: list[str]
    training: list[Tool]
    test: list[Tool]


def nmap(label: str, ports: list[int], *args: str) -> Tool:
    """nmap bounded so a silent or confusing port cannot stall the run: one retry, a host
    timeout, and service probes only up to intensity 7 (nmap's default)."""
    port_list = ",".join(map(str, ports))
    return Tool(label, ["nmap", "-n", "-Pn", "--reason", "--max-retries", "1",
                        "--host-timeout", "90s", "-p", port_list, *args, HOST], timeout=120)


def version_scan(ports: list[int]) -> Tool:
    # -oX next to the normal output: the report reads product and version from the XML.
    return nmap("nmap -sV", ports, "-sV", "-oX", "nmap-sV.xml")


def ftp() -> Protocol:
    (user, password), (other, other_password) = TRAIN_USER, TEST_USER

    def curl(label: str, url: str, *args: str) -> Tool:
        return Tool(label, ["curl", "-sS", "--max-time", "20", *args, f"ftp://{HOST}{url}"])

    def lftp(label: str, login: str, commands: str) -> Tool:
        script = f"set cmd:fail-exit no; set net:max-retries 1; set net:timeout 10; {commands}; bye"
        return Tool(label, ["lftp", "-u", login, "-e", script, HOST])

    scripts = nmap("nmap ftp-anon,ftp-syst", [21], "--script", "ftp-anon,ftp-syst")

    def brute(users: list[str], passwords: list[str]) -> Tool:
        tool = nmap("nmap ftp-brute", [21], "--script", "ftp-brute", "--script-args",
                    "userdb=users.lst,passdb=pass.lst,brute.firstonly")
        return Tool(tool.label, tool.argv, timeout=tool.timeout, files={
            "users.lst": "\n".join(users) + "\n", "pass.lst": "\n".join(passwords) + "\n"})

    return Protocol("ftp", [21], ["vsftpd", "nmap", "curl", "lftp"], training=[
        version_scan([21]),
        scripts,
        curl("curl anonymous list", "/"),
        curl("curl anonymous list subdir", "/pub/docs/"),
        curl("curl anonymous get", "/pub/readme.txt"),
        curl("curl user list", "/", "-u", f"{user}:{password}"),
        curl("curl user get", "/notes.txt", "-u", f"{user}:{password}"),
        curl("curl wrong password", "/", "-u", f"{user}:wrong-{password}"),
        curl("curl unknown user", "/", "-u", "mallory:letmein"),
        lftp("lftp user session", f"{user},{password}", "pwd; ls; cd projects; ls; cat plan.txt"),
        lftp("lftp anonymous session", "anonymous,guest@example.org", "pwd; cd pub; ls"),
        brute(["admin", user, "mallory"], ["letmein", password, "admin"]),
    ], test=[
        version_scan([21]),
        scripts,
        curl("curl anonymous list subdir", "/pub/"),
        curl("curl anonymous get", "/pub/changes.txt"),
        curl("curl user list", "/", "-u", f"{other}:{other_password}"),
        curl("curl wrong password", "/", "-u", f"{other}:nope-{other_password}"),
        curl("curl unknown user", "/", "-u", "trudy:hunter2"),
        lftp("lftp user session", f"{other},{other_password}", "pwd; ls; cat todo.txt"),
        brute(["root", other, "trudy"], ["toor", other_password, "hunter2"]),
    ])


def redis() -> Protocol:
    (user, password), (other, other_password) = TRAIN_USER, TEST_USER

    def cli(label: str, *args: str, stdin: str | None = None) -> Tool:
        return Tool(label, ["redis-cli", "-h", HOST, "-p", "6379", *args], stdin=stdin)

    info = nmap("nmap redis-info", [6379], "--script", "redis-info")
    return Protocol("redis", [6379], ["redis-server", "redis-cli", "nmap"], training=[
        version_scan([6379]),
        info,
        cli("redis-cli PING", "PING"),
        cli("redis-cli GET", "GET", "app:name"),
        cli("redis-cli GET", "GET", "app:version"),
        cli("redis-cli GET missing", "GET", "missing:alpha"),
        cli("redis-cli GET missing", "GET", "missing:beta"),
        cli("redis-cli HGETALL", "HGETALL", "user:1001"),
        cli("redis-cli LRANGE", "LRANGE", "queue:jobs", "0", "-1"),
        cli("redis-cli SET", "SET", "tmp:alpha", "one"),
        cli("redis-cli SET", "SET", "tmp:beta", "two", "EX", "600"),
        cli("redis-cli EXISTS", "EXISTS", "app:name", "missing:alpha"),
        cli("redis-cli INFO server", "INFO", "server"),
        cli("redis-cli ACL WHOAMI", "--user", user, "--pass", password, "--no-auth-warning",
            "ACL", "WHOAMI"),
        cli("redis-cli wrong password", "--user", user, "--pass", "wrong", "--no-auth-warning",
            "PING"),
        cli("redis-cli unknown command", "NOSUCHCOMMAND", "arg"),
    ], test=[
        version_scan([6379]),
        info,
        cli("redis-cli PING", "PING"),
        cli("redis-cli GET", "GET", "app:owner"),
        cli("redis-cli GET missing", "GET", "missing:gamma"),
        cli("redis-cli HGETALL", "HGETALL", "user:1002"),
        cli("redis-cli SET", "SET", "tmp:gamma", "three"),
        cli("redis-cli INFO server", "INFO", "server"),
        cli("redis-cli ACL WHOAMI", "--user", other, "--pass", other_password,
            "--no-auth-warning", "ACL", "WHOAMI"),
        cli("redis-cli wrong password", "--user", other, "--pass", "bad", "--no-auth-warning",
            "PING"),
    ])


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (ftp(), redis())}
