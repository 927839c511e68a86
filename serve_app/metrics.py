"""Prometheus metrics of the ingress (served at `/metrics`).

Label values come from fixed sets (tier, route reason, endpoint, status code, policy names from
the operator's policy file); note text and note ids never become labels.
Each ingress replica exports its own counters; scrape each replica (or use Ray's metrics agent)
when running more than one.
"""

from __future__ import annotations

from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from clinie.schema import NoteResult

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self, window: int = 500):
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "clinie_requests", "Requests by API, endpoint and status code.", ["api", "endpoint", "status"], registry=r
        )
        self.notes = Counter(
            "clinie_notes", "Notes answered, by answering tier and route reason.", ["tier", "reason"], registry=r
        )
        self.note_errors = Counter(
            "clinie_note_errors", "Notes answered with an error slot, by code.", ["code"], registry=r
        )
        self.sentences = Counter("clinie_sentences", "Sentences in answered notes.", registry=r)
        self.escalated_sentences = Counter("clinie_escalated_sentences", "Sentences sent to the LLM tier.", registry=r)
        self.escalation_rate = Gauge(
            "clinie_escalation_rate",
            "Realized escalation rate over the last notes (compare with the calibrated target to see drift).",
            ["unit"],
            registry=r,
        )
        self.cost = Counter("clinie_cost", "Estimated cost in the cost model's units, by tier.", ["tier"], registry=r)
        self.latency = Histogram(
            "clinie_tier_latency_seconds", "Latency per note by stage.", ["tier"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.in_flight = Gauge("clinie_in_flight", "Requests in flight at this ingress, by tier.", ["tier"], registry=r)
        self.rejected = Counter(
            "clinie_rejected", "Requests refused for load (429/503), by reason.", ["reason"], registry=r
        )
        self.replicas = Gauge(
            "clinie_replicas",
            "Replicas of a deployment as this ingress last saw them, by state (running, starting).",
            ["deployment", "state"],
            registry=r,
        )
        self._recent: deque[tuple[int, int, int]] = deque(maxlen=window)  # (escalated?, sentences, escalated)

    def observe_result(self, result: NoteResult, fast_cost: float, llm_cost_per_token: float) -> None:
        r = result.route
        self.notes.labels(r.tier, r.reason).inc()
        n_sent = int(r.signals.get("sentences", 0))
        esc = int(r.signals.get("escalated_sentences", 0)) if r.escalated else 0
        self.sentences.inc(n_sent)
        self.escalated_sentences.inc(esc)
        self.cost.labels("bert").inc(fast_cost)
        if r.escalated:
            self.cost.labels("llm").inc(r.signals.get("llm_tokens_estimate", 0.0) * llm_cost_per_token)
        for stage in ("bert", "llm", "total"):
            if stage in result.timings_ms:
                self.latency.labels(stage).observe(result.timings_ms[stage] / 1000)
        self._recent.append((int(r.escalated), n_sent, esc))
        notes = len(self._recent)
        sents = sum(s for _, s, _ in self._recent)
        self.escalation_rate.labels("note").set(sum(e for e, _, _ in self._recent) / notes)
        self.escalation_rate.labels("sentence").set(sum(x for _, _, x in self._recent) / sents if sents else 0.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
