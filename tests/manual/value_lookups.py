#!/usr/bin/env python3
"""Value lookups (BENCHMARKS.md, 2026-12-03): 200 sequential `emails.value` lookups in three
filter forms against a SQLite server on 127.0.0.1:PORT, addresses read from its database file.
Usage: value_lookups.py PORT DB_FILE   (token from SCIM_BENCH_TOKEN)"""
import os
TOKEN = os.environ.get("SCIM_BENCH_TOKEN", "benchtoken123456789")
import http.client, json, sys, time, urllib.parse, sqlite3
port, db = sys.argv[1], sys.argv[2]
c = sqlite3.connect(db)
emails = [r[0] for r in c.execute("select str_value from resource_values where path='emails.value' limit 200 offset 3000")]
H = {"Authorization": "Bearer " + TOKEN}
conn = http.client.HTTPConnection("127.0.0.1", int(port))
for form in ['emails.value eq "%s"', 'emails[type eq "work"].value eq "%s"', 'emails[value eq "%s"]']:
    t0 = time.time(); hits = 0
    for e in emails:
        conn.request("GET", "/scim/v2/Users?filter=" + urllib.parse.quote(form % e), headers=H)
        r = conn.getresponse(); b = json.loads(r.read()); hits += b["totalResults"]
    print("%-40s %.2f ms/req  hits %d/%d" % (form, (time.time() - t0) * 1000 / len(emails), hits, len(emails)))
