"""A seeded agent's logs: what `distill usage demo-logs` writes, to try the import and the
clustering on, and to measure the clustering against the truth.

The agent (distill/usage/synthetic.yaml) has several workloads of different kinds: tool routing
(the tools of distill/prompts/tool_tasks.yaml, one call with its arguments), field extraction
(a JSON object from a support ticket), intent classification (one label), and a one-sentence
summary. Each has its own system prompt (edited during the week), model and clients. Its calls
are chat-completions request/response records in the shape distill/usage/openai_log.py reads,
spread over days, with latency and token counts, and answers that are right by construction.
Like a real log it has untagged calls (no `workload_id`, a configurable share), personal data and
secrets inside the texts, failed calls (error responses, tool-call arguments cut off), retries,
duplicates and lines logged twice.

The true workload of each line is not in the log: `DemoLog.workloads` (and, from the command,
a sidecar `OUT.workloads.json`) holds it, so the import cannot see it.
"""

from __future__ import annotations

import json
import random
import re
import string
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path

import yaml

from distill.prompts.tool_tasks import catalogue, expand, single_templates, tool_definition

DATA = Path(__file__).with_name("synthetic.yaml")
KINDS = ("tool-routing", "extraction", "classification", "summary")
FIELDS = ("customer_name", "email", "phone", "order_id", "product", "amount")  # the extraction's keys
PLACEHOLDER = re.compile(r"\{(\w+)\}")


@lru_cache(maxsize=1)
def spec() -> dict:
    return yaml.safe_load(DATA.read_text())


@dataclass
class DemoLog:
    records: list[dict]  # one per JSONL line, in time order
    workloads: list[str]  # the true workload of records[i]
    kinds: dict[str, str]  # workload -> kind
    planted: set[str] = field(default_factory=set)  # the personal values and secrets written into texts

    def sidecar(self, seed: int, untagged: float) -> dict:
        return {"generator": "distill usage demo-logs", "seed": seed, "untagged": untagged,
                "calls": len(self.records), "kinds": self.kinds, "lines": self.workloads}


def _fill(template: str, values: dict) -> str:
    return PLACEHOLDER.sub(lambda m: str(values[m[1]]), template)


def _iban(rng: random.Random, country: str) -> str:
    """A made-up IBAN whose check digits hold (ISO 13616: mod 97 of the rearranged number is 1)."""
    letters = "".join(rng.choice(string.ascii_uppercase) for _ in range(4))

    def digits(n: int) -> str:
        return "".join(rng.choice(string.digits) for _ in range(n))

    bban = {"DE": digits(18), "GB": letters + digits(14), "NL": letters + digits(10), "FR": digits(23)}[country]
    check = 98 - int("".join(str(int(c, 36)) for c in bban + country + "00")) % 97
    iban = f"{country}{check:02d}{bban}"
    return " ".join(iban[i:i + 4] for i in range(0, len(iban), 4)) if rng.random() < 0.5 else iban


class _Agent:
    """Writes the calls of one log: the texts, the right answers and the records around them."""

    def __init__(self, rng: random.Random, untagged: float):
        self.rng, self.untagged, self.data = rng, untagged, spec()
        self.start = datetime.fromisoformat(self.data["start"])
        self.planted: set[str] = set()

    def _random(self, pattern: str) -> str:
        pools = {"d": string.digits, "a": string.ascii_letters + string.digits, "u": string.ascii_uppercase + string.digits}
        return re.sub(r"\{([dau])(\d+)\}", lambda m: "".join(self.rng.choice(pools[m[1]]) for _ in range(int(m[2]))), pattern)

    def person(self) -> dict:
        people, rng = self.data["people"], self.rng
        given, family = rng.choice(people["given"]), rng.choice(people["family"])
        key = self._random(rng.choice(people["keys"]))
        while not any(ch.isdigit() for ch in key):  # the secret patterns want a digit in a key
            key = self._random(rng.choice(people["keys"]))
        return {"name": f"{given} {family}", "email": f"{given}.{family}@{rng.choice(people['mail_domains'])}".lower(),
                "phone": self._random(rng.choice(people["phones"])), "iban": _iban(rng, rng.choice(people["iban_countries"])),
                "key": key}

    def _planted(self, text: str, values: dict) -> str:
        self.planted.update(str(values[k]) for k in ("name", "email", "phone", "iban", "key") if str(values.get(k)) in text)
        return text

    def ticket(self, intent: str) -> tuple[str, dict]:
        """A support ticket of one intent, and the values it was written from (FIELDS given or None)."""
        rng, t = self.rng, self.data["tickets"]
        values = {**self.person(), "order_id": f"NW-{rng.randint(10000, 99999)}", "product": rng.choice(self.data["products"]),
                  "amount": f"{rng.choice('€$£')}{rng.randint(12, 480)}.{rng.choice(['00', '50', '99'])}",
                  "date": (self.start - timedelta(days=rng.randint(1, 30))).strftime("%d %B").lstrip("0")}
        parts = [rng.choice(t["openings"]), rng.choice(t["intents"][intent]["texts"])]
        if rng.random() < 0.6:
            parts.append(rng.choice(t["contacts"]))
        parts.append(rng.choice(t["signoffs"]))
        used = set(PLACEHOLDER.findall(" ".join(parts))) | {"customer_name"}
        text = self._planted("\n".join(_fill(p, values) for p in parts if p), values)
        values["customer_name"] = values["name"]
        values["fields"] = {k: values[k] if k in used else None for k in FIELDS}
        return text, values

    def mail(self, label: str) -> str:
        rng, m = self.rng, self.data["mails"]
        values = {**self.person(), "time": f"{rng.randint(6, 22):02d}:{rng.choice(['05', '20', '40', '55'])}",
                  "date": (self.start + timedelta(days=rng.randint(7, 40))).strftime("%d %B").lstrip("0")}
        text = (f"From: {values['name']} <{values['email']}>\nSubject: {rng.choice(m['subjects'][label])}\n\n"
                f"{_fill(rng.choice(m['texts'][label]), values)}\n\n{values['name'].split()[0]}")
        return self._planted(text, values)

    def exchange(self, wl: dict, revision: int) -> tuple[list[dict], list[dict] | None, dict, dict]:
        """(messages, tools, the answer turn, request parameters) of one call of a workload."""
        rng = self.rng
        system = wl["system"][min(revision, len(wl["system"]) - 1)]
        tools, params = None, {"temperature": 0}
        if wl["kind"] == "tool-routing":
            cat = catalogue()
            families = wl["families"][min(revision, len(wl["families"]) - 1)]
            names = [n for f in families for n in cat["families"][f]["functions"]]
            tools = [tool_definition(cat["functions"][n]) for n in names]
            text, [call], _ = expand(rng.choice(single_templates(cat["functions"][rng.choice(names)])), rng, {})
            if rng.random() < self.data["share_with_preamble"]:
                person = self.person()
                text = self._planted(_fill(rng.choice(self.data["preambles"]), person), person) + text
            answer = {"role": "assistant", "content": None, "tool_calls": [{
                "id": f"call_{rng.getrandbits(48):012x}", "type": "function",
                "function": {"name": call["name"], "arguments": json.dumps(call["arguments"], ensure_ascii=False)}}]}
            params.update(tool_choice="auto", parallel_tool_calls=False)
        else:
            label = rng.choice(wl.get("labels") or list(self.data["tickets"]["intents"]))
            if wl["source"] == "mails":
                text, values = self.mail(label), {}
            else:
                text, values = self.ticket(label)
            content = {"extraction": lambda: json.dumps(values["fields"], ensure_ascii=False), "classification": lambda: label,
                       "summary": lambda: _fill(self.data["tickets"]["intents"][label]["summary"], values)}[wl["kind"]]()
            answer = {"role": "assistant", "content": content}
            text = _fill(rng.choice(wl["user"]), {"text": text})
            params.update({"extraction": {"response_format": {"type": "json_object"}}, "classification": {"max_tokens": 5},
                           "summary": {"temperature": 0.3, "max_tokens": 120}}[wl["kind"]])
        messages = [{"role": "system", "content": system}, {"role": "user", "content": text}]
        return messages, tools, answer, params

    def record(self, name: str, wl: dict, when: datetime, tagged: bool, request: dict, answer: dict | None,
               error: list | None = None) -> dict:
        rng = self.rng
        sent = sum(len(m["content"] or "") for m in request["messages"]) + len(json.dumps(request.get("tools") or ""))
        out = {"timestamp": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
               "client_id": rng.choice(wl["clients"])}
        if tagged:
            out["workload_id"] = name
        out["request"] = request
        if error:
            out["latency_ms"] = round(rng.uniform(30, 900), 1)
            out["response"], out["error"] = None, {"code": error[0], "type": error[1], "message": error[2]}
            return out
        said = len(answer["content"] or "") + sum(len(c["function"]["arguments"]) + 12 for c in answer.get("tool_calls") or [])
        usage = {"prompt_tokens": 8 + sent // 4, "completion_tokens": 2 + said // 4}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        out["latency_ms"] = round(180 + 14 * usage["completion_tokens"] + usage["prompt_tokens"] / 20 + rng.expovariate(1 / 120), 1)
        finish = "tool_calls" if answer.get("tool_calls") else "stop"
        out["response"] = {"id": f"chatcmpl-{rng.getrandbits(64):016x}", "object": "chat.completion",
                           "created": int(when.timestamp()), "model": wl.get("response_model", wl["model"]),
                           "choices": [{"index": 0, "message": answer, "finish_reason": finish}], "usage": usage}
        return out

    def calls(self, name: str, wl: dict, when: datetime) -> list[tuple[datetime, dict]]:
        """One call of a workload, with what can go wrong around it: an error or arguments cut off
        and then the retry, a request sent again, the same call days later, a line logged twice."""
        rng = self.rng
        revision = int((when - self.start) / timedelta(days=self.data["days"]) * len(wl["system"]))
        messages, tools, answer, params = self.exchange(wl, revision)
        messages[0]["content"] = messages[0]["content"].replace("{today}", when.date().isoformat())
        request = {"model": wl["model"], "messages": messages, **({"tools": tools} if tools else {}), **params}
        tagged = rng.random() >= self.untagged
        ok = self.record(name, wl, when, tagged, request, answer)
        later = when + timedelta(seconds=rng.uniform(2, 40))
        r, mishap = rng.random(), None
        for what, p in self.data["mishaps"].items():
            if r < p:
                mishap = what
                break
            r -= p
        if mishap is None or (mishap == "bad_arguments" and not tools):
            return [(when, ok)]
        if mishap == "error":
            return [(when, self.record(name, wl, when, tagged, request, None, rng.choice(self.data["errors"]))),
                    (later, self.record(name, wl, later, tagged, request, answer))]
        if mishap == "bad_arguments":  # the answer was cut off mid-arguments: not JSON
            args = answer["tool_calls"][0]["function"]["arguments"]
            cut = json.loads(json.dumps(answer))
            cut["tool_calls"][0]["function"]["arguments"] = args[:max(1, len(args) // 2)]
            bad = self.record(name, wl, when, tagged, request, cut)
            bad["response"]["choices"][0]["finish_reason"] = "length"
            return [(when, bad), (later, self.record(name, wl, later, tagged, request, answer))]
        if mishap == "resent":  # the agent timed out although the answer came: the same request again
            return [(when, ok), (later, self.record(name, wl, later, tagged, request, answer))]
        if mishap == "duplicate":  # the same question and answer another day (of the logged week)
            week = timedelta(days=self.data["days"])
            again = self.start + (when - self.start + timedelta(days=rng.uniform(1, 3))) % week
            return [(when, ok), (again, self.record(name, wl, again, tagged, request, answer))]
        return [(when, ok), (when, ok)]  # logged twice: the very same record

    def moment(self) -> datetime:
        rng = self.rng
        hour = rng.choices(range(24), weights=self.data["hours"])[0]
        return self.start + timedelta(days=rng.randrange(self.data["days"]), hours=hour, seconds=rng.uniform(0, 3600))


def generate_logs(calls: int = 3000, seed: int = 0, untagged: float = 0.3) -> DemoLog:
    """`calls` log records of the demo agent, in time order; `untagged` of them without workload_id."""
    if calls < 1:
        raise ValueError(f"calls: {calls}; give at least 1")
    if not 0 <= untagged <= 1:
        raise ValueError(f"untagged: {untagged}; give a share between 0 and 1")
    rng = random.Random(seed)
    agent = _Agent(rng, untagged)
    workloads = agent.data["workloads"]
    names = list(workloads)
    out: list[tuple[datetime, int, str, dict]] = []
    while len(out) < calls:
        name = rng.choices(names, weights=[workloads[n]["share"] for n in names])[0]
        for when, record in agent.calls(name, workloads[name], agent.moment()):
            out.append((when, len(out), name, record))
    out = sorted(out[:calls], key=lambda x: (x[0], x[1]))
    return DemoLog([r for *_, r in out], [n for _, _, n, _ in out], {n: w["kind"] for n, w in workloads.items()},
                   agent.planted)


def sidecar_path(out: Path) -> Path:
    """Where the true workloads of a demo log go: beside it, OUT.workloads.json."""
    return out.with_name(out.name.removesuffix(".jsonl") + ".workloads.json")


def write_demo_logs(out: Path, calls: int = 3000, seed: int = 0, untagged: float = 0.3) -> DemoLog:
    log = generate_logs(calls, seed, untagged)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in log.records))
    sidecar_path(out).write_text(json.dumps(log.sidecar(seed, untagged), indent=1) + "\n")
    return log
