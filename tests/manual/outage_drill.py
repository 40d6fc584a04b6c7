#!/usr/bin/env python3
"""Outage drill (BENCHMARKS.md, 2026-12-03). Usage: outage_drill.py PORT[,PORT...] USERS,
with the servers on 127.0.0.1 sharing one database and the token in SCIM_BENCH_TOKEN. Stop and
start PostgreSQL while it runs; at the end it prints the status counts and checks that every
acknowledged user is stored once, is in the group and has its PATCHed title; it prints the
kept count (the unfiltered total) beside the users counted by a filter."""
import os
TOKEN = os.environ.get("SCIM_BENCH_TOKEN", "benchtoken123456789")
# Outage drill: N threads create users, add them to one shared group and PATCH them through two
# server instances, retrying 503s and connection errors as an IdP would; prints status counts.
import http.client, json, sys, threading, time, collections
ports = [int(p) for p in sys.argv[1].split(",")]
users = int(sys.argv[2]); threads = 16
RUN = str(int(time.time()))
TOK = TOKEN
H = {"Authorization": "Bearer " + TOK, "Content-Type": "application/scim+json"}
counts = collections.Counter(); lock = threading.Lock()
acked = set()
def req(port, method, path, body=None):
    for attempt in range(200):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            c.request(method, path, body=json.dumps(body) if body is not None else None, headers=H)
            r = c.getresponse(); data = r.read(); ra = r.getheader("Retry-After")
            c.close()
            with lock: counts[(method, r.status)] += 1
            if r.status == 503:
                assert ra is not None, "503 without Retry-After"
                assert b"scim:api:messages:2.0:Error" in data, data
                time.sleep(0.2); continue
            if r.status >= 500:
                print("5xx", r.status, data[:300]); time.sleep(0.2); continue
            return r.status, json.loads(data) if data else None
        except (ConnectionError, OSError) as e:
            with lock: counts[("conn-error", type(e).__name__)] += 1
            time.sleep(0.2)
    raise SystemExit("gave up")
st, g = req(ports[0], "POST", "/scim/v2/Groups", {"schemas":["urn:ietf:params:scim:schemas:core:2.0:Group"],"displayName":"drill-%d" % time.time()})
gid = g["id"]
def work(t):
    for i in range(t, users, threads):
        port = ports[i % len(ports)]
        name = "drill%s%06d@example.com" % (RUN, i)
        st, body = req(port, "POST", "/scim/v2/Users", {"schemas":["urn:ietf:params:scim:schemas:core:2.0:User"],"userName":name,"active":True})
        if st == 409:  # a retried create that had landed: look it up
            st2, page = req(port, "GET", '/scim/v2/Users?filter=userName%20eq%20%22' + name + '%22')
            uid = page["Resources"][0]["id"]
        else:
            assert st == 201, (st, body); uid = body["id"]
        with lock: acked.add(uid)
        st, _ = req(ports[(i + 1) % len(ports)], "PATCH", "/scim/v2/Groups/" + gid, {"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[{"op":"add","path":"members","value":[{"value":uid}]}]})
        assert st in (200, 204), st
        st, body = req(port, "PATCH", "/scim/v2/Users/" + uid, {"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[{"op":"replace","path":"title","value":"drilled" + RUN}]})
        assert st == 200 and body["title"] == "drilled" + RUN, (st, body)
ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
t0 = time.time(); [t.start() for t in ts]; [t.join() for t in ts]
print("elapsed %.1fs" % (time.time() - t0), dict(counts))
st, grp = req(ports[1 % len(ports)], "GET", "/scim/v2/Groups/" + gid)
members = {m["value"] for m in grp.get("members", [])}
st, page = req(ports[0], "GET", '/scim/v2/Users?filter=userName%20sw%20%22drill' + RUN + '%22&count=0')
st, patched = req(ports[1 % len(ports)], "GET", '/scim/v2/Users?filter=title%20eq%20%22drilled' + RUN + '%22&count=0')
# The unfiltered total is the kept count (database triggers), the filtered one counts rows: on a
# database of the drill's own they agree.
st, kept = req(ports[0], "GET", "/scim/v2/Users?count=0")
print("acked users", len(acked), "users stored", page["totalResults"], "kept count", kept["totalResults"], "group members", len(members), "missing from group", len(acked - members), "patched", patched["totalResults"])
if not (len(acked) == page["totalResults"] == kept["totalResults"] == patched["totalResults"] and not acked - members):
    sys.exit("MISMATCH: users lost, duplicated, out of the group, unpatched or miscounted")
