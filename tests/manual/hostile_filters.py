#!/usr/bin/env python3
"""Hostile filters: sends long `or` chains of `co` terms and nested `not` value filters to a
server on 127.0.0.1:PORT and prints status and time of each (BENCHMARKS.md, 2026-12-03).
Usage: hostile_filters.py PORT   (token from SCIM_BENCH_TOKEN)"""
import os
TOKEN = os.environ.get("SCIM_BENCH_TOKEN", "benchtoken123456789")
import urllib.parse, urllib.request, time, json, sys
port = sys.argv[1]
def q(f, extra=""):
    url = "http://127.0.0.1:%s/scim/v2/Users?count=10&filter=" % port + urllib.parse.quote(f) + extra
    r = urllib.request.Request(url, headers={"Authorization": "Bearer " + TOKEN})
    t = time.time()
    try:
        with urllib.request.urlopen(r) as resp: body = json.load(resp); st = resp.status
    except urllib.error.HTTPError as e: st = e.code; body = json.load(e)
    print(st, "%.3fs" % (time.time() - t), body.get("totalResults") if st == 200 else (body.get("scimType"), body.get("detail")[:60]))
for _ in range(3): q('emails.value co "zz"')
q('emails[type eq "work"].value eq "nobody@example.com"')
terms = ['emails.value co "q%d"' % i for i in range(150)]
f = " or ".join(terms); f = f[:4000].rsplit(" or ", 1)[0]
q(f)
f = " and ".join(['not (emails[value co "q%d" or type ew "x"])' % i for i in range(100)]); f = f[:4000].rsplit(" and ", 1)[0]
q(f)
