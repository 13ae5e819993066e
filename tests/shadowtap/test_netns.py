import subprocess

from shadowtap.netns import list_namespaces


def test_topology_links_hosts_and_removes_everything(topology):
    topo = topology()
    a, b = topo.host("a"), topo.host("b")
    topo.link(a, b, "10.250.9.1", "10.250.9.2")
    ping = a.run(["ping", "-c", "1", "-W", "2", "10.250.9.2"], check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    names = {a.ns, b.ns}
    assert names <= set(list_namespaces())
    topo.close()
    assert not names & set(list_namespaces())
    assert (
        subprocess.run(
            ["ip", "netns", "exec", a.ns, "true"], capture_output=True, check=False
        ).returncode
        != 0
    )
