"""Security of the labeling server, over real HTTP on 127.0.0.1 (a `label serve` subprocess):
private tasks, CSRF, escaping, input validation, no path outside the app's own assets."""

import http.client
import sqlite3
import urllib.parse

import pytest

from rlhf_jax.label.loadtest import LabelerClient, serve
from tests.label_fixtures import HOT, make_db


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    db = tmp_path_factory.mktemp("label") / "l.db"
    store, admin, tokens = make_db(db, items=(HOT,), per_prompt=3, labelers=("ann", "bob", "eve"))
    with serve(str(db)) as srv:
        yield srv, str(db), admin, tokens


def raw_get(url, path, cookie=""):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request("GET", path, headers={"Cookie": cookie} if cookie else {})
    resp = conn.getresponse()
    body = resp.read().decode("utf-8", "replace")
    conn.close()
    return resp.status, dict((k.lower(), v) for k, v in resp.getheaders()), body


def answers(db):
    return sqlite3.connect(db).execute("SELECT labeler, ranking, revision FROM answers ORDER BY id").fetchall()


def post(client, task_id, form):
    return client._request("POST", f"/task/{task_id}", urllib.parse.urlencode(form))


def test_labeler_cannot_read_or_overwrite_another_labelers_task(server):
    srv, db, _, tokens = server
    ann, bob = LabelerClient(srv.url, tokens["ann"]), LabelerClient(srv.url, tokens["bob"])
    ann.login(), bob.login()
    t_ann = ann.next_task()
    csrf_ann, k = ann.open_task(t_ann)
    ann.submit(t_ann, ["1", "2", "3", "F"], csrf_ann)
    before = answers(db)
    csrf_bob, _ = bob.open_task(bob.next_task())
    status, _, body = bob._request("GET", f"/task/{t_ann}")  # bob reads ann's task
    assert status == 404 and "not one of your tasks" in body and "Open the windows" not in body
    form = {"csrf": csrf_bob, "action": "submit", **{f"rank_{i}": "1" for i in range(k)}}
    assert post(bob, t_ann, form)[0] == 404  # bob overwrites ann's task with his own CSRF token
    assert post(bob, t_ann, dict(form, action="skip"))[0] == 404
    form_ann_csrf = dict(form, csrf=csrf_ann)  # ann's CSRF token with bob's session
    assert post(bob, t_ann, form_ann_csrf)[0] == 403
    assert answers(db) == before  # nothing changed
    status, _, body = bob._request("GET", "/progress")
    assert status == 200 and f'href="/task/{t_ann}"' not in body
    status, _, body = bob._request("GET", "/admin")  # a labeler is not the admin
    assert status == 403 and "ann" not in body
    ann.close(), bob.close()


def test_post_without_or_with_wrong_csrf_is_refused(server):
    srv, db, _, tokens = server
    eve = LabelerClient(srv.url, tokens["eve"])
    eve.login()
    t = eve.next_task()
    csrf, k = eve.open_task(t)
    ranks = {f"rank_{i}": str(i + 1) for i in range(k)}
    before = answers(db)
    for form in (dict(ranks, action="submit"), dict(ranks, action="submit", csrf=""),
                 dict(ranks, action="submit", csrf=csrf[:-2] + "xx")):
        status, _, body = post(eve, t, form)
        assert status == 403 and "CSRF" in body
    assert eve._request("POST", "/logout", "")[0] == 403  # logout is a form post too
    assert answers(db) == before
    # a JSON or multipart body is not a form: refused before anything is read
    status, _, _ = eve._request("POST", f"/task/{t}", None)
    assert status == 400
    # invalid ranks: refused with the reason, nothing stored
    for bad, why in [({"rank_0": "9"}, "out of range"), ({"rank_0": ""}, "has no rank"),
                     ({"rank_0": "<b>x</b>"}, "is not a number")]:
        status, _, body = post(eve, t, dict(ranks, csrf=csrf, action="submit", **bad))
        assert status == 400 and why in body and "<b>x</b>" not in body
    status, _, body = eve._request("POST", f"/task/{t}", urllib.parse.urlencode(
        dict(ranks, csrf=csrf, action="submit")) + "&rank_0=2")
    assert status == 400 and "sent twice" in body
    assert answers(db) == before
    assert eve.submit(t, [str(i + 1) for i in range(k)], csrf) > 0
    eve.close()


def test_completion_with_script_renders_as_text(server):
    srv, _, _, tokens = server
    ann = LabelerClient(srv.url, tokens["ann"])
    ann.login()
    status, _, body = ann._request("GET", "/progress")
    task_id = int(body.split('href="/task/')[1].split('"')[0])
    status, headers, body = ann._request("GET", f"/task/{task_id}")
    assert status == 200 and "<script>alert" not in body
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;It is not too hot." in body
    assert body.count("<script") == 1 and '<script src="/static/label.js"></script>' in body
    ann.close()
    status, headers, _ = raw_get(srv.url, "/")
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("path", ["/../../etc/passwd", "/static/../../../../../../etc/passwd",
                                  "/static/..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
                                  "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
                                  "//etc/passwd", "/static//etc/passwd", "/static/../app.py",
                                  "/static/..%2fapp.py", "/static/../templates/base.html",
                                  "/etc/passwd", "/login/../../etc/passwd"])
def test_no_path_outside_the_apps_assets_is_served(server, path):
    srv = server[0]
    status, _, body = raw_get(srv.url, path)
    assert status in (400, 403, 404), (path, status)
    assert "root:" not in body and "import" not in body and "{%" not in body
    assert raw_get(srv.url, "/static/label.js")[0] == 200


def test_bad_and_missing_logins(server):
    srv, _, admin, tokens = server
    ann_id, secret = tokens["ann"].split(".")
    for token in (f"{ann_id}.{secret[:-3]}abc", "a." + secret, "nonsense", "1" * 200):
        status, headers, body = raw_get(srv.url, f"/login/{token}")
        assert status == 403 and "set-cookie" not in headers
    for path in ("/task", "/progress", "/instructions", "/admin", "/task/1"):
        assert raw_get(srv.url, path)[0] == 403
    status, headers, _ = raw_get(srv.url, f"/login/{admin}")
    assert status == 303 and headers["location"] == "/admin"
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "samesite=lax" in cookie.lower()
    status, _, body = raw_get(srv.url, "/admin", cookie.split(";")[0])
    assert status == 200 and "<td>ann</td>" in body
    assert raw_get(srv.url, "/task", cookie.split(";")[0])[0] == 403  # the admin labels nothing
