"""Helpers the end-to-end tests share: raw HTTP to an SGLang server, T=1 samples, a two-sample test."""

import json
import urllib.error
import urllib.request
from collections import Counter


def post(url, path, body, raw=False):
    """(status, JSON body) of a POST; HTTP errors come back as their status, not as exceptions."""
    data = body.encode() if raw else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def generate_ids(url, prompt_ids, samples, tokens, temperature, batch=40, **sampling):
    """`samples` output id lists of `tokens` tokens for one prompt (batched /generate calls), and the
    summed (completion tokens, verify steps); `sampling`: more sampling_params (top_k, logit_bias...)."""
    outs, completion, verify = [], 0, 0
    for start in range(0, samples, batch):
        n = min(batch, samples - start)
        status, res = post(url, "/generate", {"input_ids": [prompt_ids] * n, "sampling_params": {
            "max_new_tokens": tokens, "temperature": temperature, "ignore_eos": True, **sampling}})
        assert status == 200, res
        for r in res:
            outs.append(r["output_ids"])
            completion += r["meta_info"]["completion_tokens"]
            verify += r["meta_info"].get("spec_verify_ct", 0) or 0
    return outs, (completion, verify)


def chi2_same_distribution(a: list[int], b: list[int]) -> float:
    """p-value of a two-sample chi-square test; categories with fewer than 10 samples in all are pooled."""
    from scipy.stats import chi2_contingency

    ca, cb = Counter(a), Counter(b)
    keep = [t for t in set(ca) | set(cb) if ca[t] + cb[t] >= 10]
    rest = [len(a) - sum(ca[t] for t in keep), len(b) - sum(cb[t] for t in keep)]
    table = [[ca[t] for t in keep] + [rest[0]], [cb[t] for t in keep] + [rest[1]]]
    cols = [j for j in range(len(table[0])) if table[0][j] + table[1][j] > 0]
    table = [[row[j] for j in cols] for row in table]
    if len(table[0]) < 2:
        return 1.0
    return float(chi2_contingency(table).pvalue)
