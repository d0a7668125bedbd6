"""Log records for the usage import tests: chat-completions pairs, OTLP spans in the current and
the older GenAI forms, and a table of planted secrets and personal data (made up; the numbers
pass their checksums, and no provider issued the keys)."""

from __future__ import annotations

import json
from pathlib import Path

TOOLS = [{"type": "function", "function": {
    "name": "book_flight", "description": "Book a seat for a passenger",
    "parameters": {"type": "object", "properties": {"passenger_name": {"type": "string"}, "flight": {"type": "string"}},
                   "required": ["passenger_name", "flight"]}}}]


def openai_record(user: str, answer: str | None = "Done.", *, system: str = "You book flights.", tool_calls=None,
                  history=(), error=None, response_id: str = "chatcmpl-1", timestamp="2025-05-01T10:00:00Z",
                  client_id: str = "agent-1", tools=TOOLS, params=None) -> dict:
    """A Data Flywheel record: the request as sent, and the ChatCompletion (or an error)."""
    messages = [{"role": "system", "content": system}, *history, {"role": "user", "content": user}]
    record = {"timestamp": timestamp, "workload_id": "booking", "client_id": client_id, "latency_ms": 420,
              "request": {"model": "gpt-4o", "messages": messages, "tools": tools, **(params or {})}}
    if error is not None:
        record["response"], record["error"] = None, error
        return record
    message = {"role": "assistant", "content": answer}
    if tool_calls:
        message["tool_calls"] = [{"id": f"call_{i}", "type": "function",
                                  "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)}}
                                 for i, (name, args) in enumerate(tool_calls)]
    record["response"] = {"id": response_id, "object": "chat.completion", "model": "gpt-4o-2024-08-06",
                          "choices": [{"index": 0, "finish_reason": "tool_calls" if tool_calls else "stop", "message": message}],
                          "usage": {"prompt_tokens": 60, "completion_tokens": 9, "total_tokens": 69}}
    return record


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def attr(key: str, value) -> dict:
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    if isinstance(value, list):
        return {"key": key, "value": {"arrayValue": {"values": [{"stringValue": v} for v in value]}}}
    return {"key": key, "value": {"stringValue": value}}


def span(span_id: str, attributes: dict, events=(), error: str | None = None, start: int = 1_746_093_600_000_000_000) -> dict:
    s = {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": span_id, "name": "chat gpt-4o", "kind": 3,
         "startTimeUnixNano": str(start), "endTimeUnixNano": str(start + 812_000_000),
         "attributes": [attr(k, v) for k, v in attributes.items()],
         "events": [{"timeUnixNano": str(start), "name": name, "attributes": [attr(k, v) for k, v in a.items()]}
                    for name, a in events]}
    if error:
        s["status"] = {"code": 2, "message": error}
    return s


def otel_export(spans: list[dict], service: str = "travel-agent") -> dict:
    return {"resourceSpans": [{"resource": {"attributes": [attr("service.name", service)]},
                               "scopeSpans": [{"scope": {"name": "opentelemetry.instrumentation.openai"}, "spans": spans}]}]}


def new_form_span(span_id: str, user: str, answer: str = "", tool_call=None, tool_result=None, system: str = "You book flights.",
                  **extra) -> dict:
    """The current conventions: messages as JSON attributes of typed parts."""
    inputs = [{"role": "user", "parts": [{"type": "text", "content": user}]}]
    if tool_result is not None:
        inputs += [{"role": "assistant", "parts": [{"type": "tool_call", "id": "call_a", "name": tool_result[0],
                                                    "arguments": tool_result[1]}]},
                   {"role": "tool", "parts": [{"type": "tool_call_response", "id": "call_a", "response": tool_result[2]}]}]
    parts = [{"type": "text", "content": answer}] if answer else []
    if tool_call is not None:
        parts.append({"type": "tool_call", "id": "call_b", "name": tool_call[0], "arguments": tool_call[1]})
    outputs = [{"role": "assistant", "parts": parts, "finish_reason": "tool_call" if tool_call else "stop"}]
    attributes = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o-2024",
                  "gen_ai.usage.input_tokens": 31, "gen_ai.usage.output_tokens": 7,
                  "gen_ai.response.finish_reasons": ["stop"], "gen_ai.request.temperature": "0.2",
                  "gen_ai.system_instructions": json.dumps([{"type": "text", "content": system}]),
                  "gen_ai.input.messages": json.dumps(inputs), "gen_ai.output.messages": json.dumps(outputs),
                  "gen_ai.tool.definitions": json.dumps(TOOLS), **extra}
    return span(span_id, attributes)


def old_form_span(span_id: str, user: str, answer: str, tool_call=None, system: str = "You book flights.") -> dict:
    """The conventions before it: one span event per message, and a gen_ai.choice event."""
    message = {"content": answer}
    if tool_call is not None:
        message["tool_calls"] = [{"id": "call_c", "type": "function",
                                  "function": {"name": tool_call[0], "arguments": json.dumps(tool_call[1])}}]
    events = [("gen_ai.system.message", {"content": system}), ("gen_ai.user.message", {"content": user}),
              ("gen_ai.choice", {"index": 0, "finish_reason": "stop", "message": json.dumps(message)})]
    return span(span_id, {"gen_ai.system": "openai", "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o",
                          "gen_ai.usage.input_tokens": 20, "gen_ai.usage.output_tokens": 5}, events)


# Planted values: (kind, value, the text it is planted in). A value counts as found when none of
# its words (3+ letters or digits) is left in the redacted text. Contexts that are JSON objects
# are read value by value with their keys, as tool arguments and results are.
PLANTED = [
    ("secret", "sk-proj-Xy12Ab34Cd56Ef78Gh90Ij12Kl34", "use key {} for the API"),
    ("secret", "ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5", "token={}"),
    ("secret", "AKIA2E0A8F3B244C9986", "aws_access_key_id: {}"),
    ("secret", "Hunter2secret9", 'the DB password: "{}"'),
    ("secret", "sk_live_51Hq2eRtY7uI9oP3aS5dF7gH", '{{"stripe_key": "{}"}}'),
    ("card", "4539 1488 0343 6467", "my card is {} exp 04/27"),
    ("card", "5555 5555 5555 4444", "charge {} please"),
    ("card", "378282246310005", '{{"card_number": "{}"}}'),
    ("card", "6011-1111-1111-1117", "Discover {}"),
    ("email", "maria.gonzalez@gmx.de", "write to {}"),
    ("email", "k.watanabe@docomo.ne.jp", '{{"email": "{}"}}'),
    ("email", "sven.eriksson@telia.se", "cc {} on it"),
    ("phone", "+44 20 7946 0958", "call me on {}"),
    ("phone", "(415) 555-0132", "my cell is {}"),
    ("phone", "+49 30 901820", '{{"phone": "{}"}}'),
    ("phone", "01 23 45 67 89", "appelez le {}"),
    ("ip", "203.0.113.42", "the server at {} is down"),
    ("ip", "2001:db8::8a2e:370:7334", "ping {}"),
    ("iban", "DE89 3704 0044 0532 0130 00", "IBAN {}"),
    ("iban", "GB82WEST12345698765432", "pay into {}"),
    ("iban", "FR14 2004 1010 0505 0001 3M02 606", "mon IBAN: {}"),
    ("iban", "NL91ABNA0417164300", '{{"iban": "{}"}}'),
    ("iban", "ES91 2100 0418 4502 0005 1332", "transfer to {} today"),
    ("iban", "CH93 0076 2011 6238 5295 7", "konto {}"),
    ("national-id", "536-22-1847", "SSN: {}"),
    ("national-id", "219099998", "social security number {}"),
    ("national-id", "AB 12 34 56 C", "NI number {}"),
    ("national-id", "12345678Z", "DNI {}"),
    ("national-id", "X1234567L", "NIE {}"),
    ("national-id", "RSSMRA85T10A562S", "codice fiscale {}"),
    ("national-id", "2 55 08 14 168 025 38", "numéro de sécurité sociale {}"),
    ("national-id", "811218-9876", "personnummer {}"),
    ("national-id", "111222333", "BSN {}"),
    ("national-id", "44051401359", "PESEL {}"),
    ("national-id", "86095742719", "Steuer-ID {}"),
    ("person", "Maria Gonzalez", "Hi, my name is {} and I need a flight."),
    ("person", "Jean-Pierre Dubois", "Please book a table for {} tomorrow."),
    ("person", "Aisha Okafor", "Send it to Dr. {} at the clinic."),
    ("person", "Sven Eriksson", "Call {} about the meeting."),
    ("person", "Priya Raghunathan", "Thanks for the help.\nRegards,\n{}"),
    ("person", "Kenji Watanabe", '{{"passenger_name": "{}", "seat": "12A"}}'),
    ("person", "Olga Petrova", "Book a flight for {} from Berlin to Madrid."),
    ("person", "Liam O'Connor", "The customer {} wants a refund."),
    ("person", "Fatima Al-Sayed", "Contact {} at the front desk."),
    ("person", "Wei Chen", "{} will join the call."),
    ("person", "Oluwaseun Adeyemi", "I spoke with {} yesterday about the invoice."),
    ("person", "Siobhan Kavanagh", "Dear {},\nyour order has shipped."),
    ("person", "Björn Lindqvist", '{{"name": "{}", "role": "driver"}}'),
    ("person", "Agnieszka Kowalczyk", "Please forward this to {} in accounting."),
    ("person", "Rahul Mehta", "Mr. {} asked for an upgrade."),
    ("person", "Hannah Schmidt", "This is {} from the Berlin office."),
    ("person", "Carlos Mendoza", "Reservation under the name {}."),
    ("person", "Thandiwe Nkosi", "Our new hire, {}, starts Monday."),
    ("person", "Giulia Romano", '{{"first_name": "Giulia", "last_name": "Romano"}}'),
    ("person", "Mateo Fernández", "Hola {}, tu vuelo sale a las 9."),
    ("address", "42 Elm Street, Springfield, IL 62704", "I live at {}."),
    ("address", "221B Baker Street, London NW1 6XE", "Ship it to {} please"),
    ("address", "1600 Pennsylvania Avenue NW, Washington, DC 20500", "Deliver to {}"),
    ("address", "12 rue de la Paix, 75002 Paris", "Adresse: {}"),
    ("address", "Via Roma 12, 00184 Roma", "indirizzo {}"),
    ("address", "Hauptstraße 5, 10115 Berlin", "Meine Adresse ist {}."),
    ("address", "Keizersgracht 123, 1015 CJ Amsterdam", "adres: {}"),
    ("address", "350 Fifth Avenue, New York, NY 10118", '{{"shipping_address": "{}"}}'),
    ("address", "PO Box 1234", "mail it to {}"),
    ("address", "SW1A 1AA", "postcode {}"),
    ("address", "Calle Mayor 5, 28013 Madrid", "vivo en {}"),
    ("address", "77 Mass Ave, Apt 4B, Cambridge, MA 02139", "my flat is at {}"),
]


def words(value: str) -> set[str]:
    """The words of a planted value that must not survive redaction: 3+ letters or digits."""
    import re

    return {w for w in re.findall(r"[^\W_]{3,}", value)}


# Written after the rules and never tuned against: what its recall says is closer to what the
# detectors do on text they were not written for (PLANTED grew with the rules).
HELD_OUT = [
    ("secret", "xoxb-2048193746-5512093847-Qw3Er5Ty7Ui9", "slack token {}"),
    ("secret", "hf_QwErTy12UiOp34AsDf56GhJk78LzXc90Vb", "HF_TOKEN={}"),
    ("secret", "AIzaSyB1c2D3e4F5g6H7i8J9k0L1m2N3o4P5q6R", '{{"api_key": "{}"}}'),
    ("card", "4012 8888 8888 1881", "Visa {}"),
    ("card", "3530111333300000", "JCB card {} on file"),
    ("email", "first.last+travel@company.co.uk", "reply to {}"),
    ("email", "d.okoro@uni-lagos.edu.ng", "Samuel's address is {}"),
    ("phone", "+33 6 12 34 56 78", "portable: {}"),
    ("phone", "+1-800-555-0199", "hotline {}"),
    ("ip", "10.0.12.7", "ssh into {}"),
    ("iban", "IT60 X054 2811 1010 0000 0123 456", "bonifico su {}"),
    ("iban", "BE68539007547034", "rekening {}"),
    ("iban", "PL61 1090 1014 0000 0712 1981 2874", "numer konta {}"),
    ("national-id", "078-05-1121", "SSN {}"),
    ("national-id", "JG 10 37 59 A", "National Insurance: {}"),
    ("national-id", "Y2345678Z", "mi NIE es {}"),
    ("national-id", "640823-3234", "personnr {}"),
    ("person", "Tomasz Wiśniewski", "Yesterday {} approved the budget."),
    ("person", "Nguyen Van An", "Can you reschedule my appointment with {}?"),
    ("person", "Chiara Bianchi", "Forward the contract to {} and her team."),
    ("person", "Ahmed Hassan", "The ticket was opened by {} on Tuesday."),
    ("person", "Eleanor Whitfield", "Please update the record for Mrs {}."),
    ("person", "Ingrid Solberg", "{}'s passport expires next month."),
    ("person", "Dmitri Volkov", "Assign the case to {}."),
    ("person", "Lucía Herrera", "We need a signature from {}."),
    ("person", "kwame mensah", "ask {} to call back"),
    ("person", "Yuki Tanaka", "Order placed by {}, shipping to Osaka."),
    ("person", "Samuel Okoro", "Patient: {}, DOB 1984-03-12"),
    ("person", "Helena Novak", "From: {}\nSubject: invoice"),
    ("person", "Lars Andersen", "{} and I will attend."),
    ("person", "Zainab Bello", "I am writing on behalf of {}."),
    ("person", "Nadia Haddad", "{} called twice this morning."),
    ("person", "Pieter de Vries", "Get me the file of {}."),
    ("person", "Rafael Souza", "The driver, {}, is waiting outside."),
    ("person", "Anneliese Brandt", "Approved — {}"),
    ("person", "Marguerite Lefebvre", "Tell {} the room is ready."),
    ("person", "Arjun Nair", "Is {} available on Friday?"),
    ("address", "1208 Oak Ridge Drive, Austin, TX 78759", "send the parts to {}"),
    ("address", "10 Downing St, London SW1A 2AA", "Our office: {}"),
    ("address", "Berliner Allee 27, 40212 Düsseldorf", "Lieferadresse: {}"),
    ("address", "8 avenue des Champs-Élysées, 75008 Paris", "livraison au {}"),
    ("address", "500 W 2nd St Suite 1900, Austin TX 78701", "return address {}"),
    ("address", "14 Crescent Road, Bristol BS8 1TH", "she moved to {}"),
    ("address", "Plaza Mayor 3, 37002 Salamanca", "entregar en {}"),
    ("address", "9876 Sunset Blvd, Los Angeles, CA 90069", "ship to {}"),
    ("address", "Piazza Navona 45, Roma", "ci vediamo in {}"),
    ("address", "3-5 Harbour Lane, Dublin 2", "my address is {}"),
]


class DemoStore:
    """A demo agent's log (distill.usage.synthetic) imported into a store, with the true workload
    of every stored call (by call_id), which the store itself does not know."""

    def __init__(self, root: Path, calls: int, seed: int, untagged: float, log_name: str = "demo.jsonl"):
        from distill.usage import UsageStore, import_logs
        from distill.usage.synthetic import write_demo_logs

        self.log_path = root / log_name
        self.log = write_demo_logs(self.log_path, calls, seed, untagged)
        self.store = str(root / "store")
        self.summary = import_logs([str(self.log_path)], self.store, use_ner=False)  # rules only: fast, deterministic
        rows = UsageStore.open(self.store).read_calls(["call_id", "source_line"]).to_pylist()
        self.truth = {r["call_id"]: self.log.workloads[r["source_line"] - 1] for r in rows}


def adjusted_rand(truth: dict[str, str], assignments: dict[str, str]) -> float:
    from sklearn.metrics import adjusted_rand_score

    ids = sorted(truth)
    return float(adjusted_rand_score([truth[i] for i in ids], [assignments[i] for i in ids]))


def claude_store(root: Path, model: str, calls: int = 30) -> str:
    """A store of one tool-routing task whose calls a model under `model`'s name answered."""
    from distill.usage import import_logs

    cities = ["Lisbon", "Oslo", "Cairo", "Lima", "Hanoi", "Quito", "Dakar", "Riga", "Perth", "Kyoto"]
    records = []
    for i in range(calls):
        flight = f"QX{1000 + 37 * i}"
        r = openai_record(f"Book flight {flight} to {cities[i % 10]} for seat {i}", None, response_id=f"r{i}",
                          timestamp=f"2025-05-01T10:{i:02d}:00Z",
                          tool_calls=[("book_flight", {"passenger_name": "me", "flight": flight})])
        r["request"]["model"] = r["response"]["model"] = model
        records.append(r)
    write_jsonl(root / "claude.jsonl", records)
    store = str(root / "claude-store")
    import_logs([str(root / "claude.jsonl")], store, use_ner=False)
    return store


BINARY = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".npy", ".wandb")


def leaks(values: set[str], *folders: Path) -> list[tuple[str, str]]:
    """(value, file) for every planted value found in a file under the folders: Parquet tables read
    as their rows' JSON, other files as text; weights skipped (no text is stored in them)."""
    import pyarrow.parquet as pq

    found = []
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            if not path.is_file() or path.name.endswith(BINARY):
                continue
            if path.suffix == ".parquet":
                text = json.dumps(pq.read_table(path).to_pylist(), default=str, ensure_ascii=False)
            else:
                text = path.read_bytes().decode("utf-8", errors="ignore")
            variants = {v: {v, json.dumps(v, ensure_ascii=False)[1:-1]} for v in values}
            found += [(v, str(path)) for v, forms in variants.items() if any(f in text for f in forms)]
    return found
