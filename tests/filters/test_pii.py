import pytest
import yaml
from pydantic import ValidationError

from distill.filters import FILTERS, FilterContext, FilterVerdict
from distill.recipe import RecipeLoader
from distill.filters.pii import KINDS, PATTERNS_FILE, Allow, PiiParams, filter_pii, find_pii, load_patterns

# Shapes only: made-up values that no provider issued.
GITHUB = "ghp_" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5"
GITHUB_FINE = "github_pat_" + "11ABCDEFG0" + "aBcDeFgHiJkLmNoPqRsTuV_1234"
OPENAI = "sk-proj-" + "Xy12Ab34Cd56Ef78Gh90Ij12Kl34"
ANTHROPIC = "sk-ant-api03-" + "Zz9Yy8Xx7Ww6Vv5Uu4Tt3Ss2Rr1Qq0"
SLACK = "xoxb-" + "2048193746-5512093847-Qw3Er5Ty7Ui9"
SLACK_HOOK = "https://hooks.slack.com/services/" + "T01ABCDEF/B02GHIJKL/Mn0pQr5StUv"
GOOGLE = "AIza" + "Sy" + "B1c2D3e4F5g6H7i8J9k0L1m2N3o4P5q6R"
STRIPE = "sk_live_" + "51Hq2eRtY7uI9oP3aS5dF7gH"
HUGGINGFACE = "hf_" + "QwErTy12UiOp34AsDf56GhJk78LzXc90Vb"
AWS = "AKIA" + "2E0A8F3B244C9986"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkFubiJ9"
    ".Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0"
)
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEAx9k2\nq7Lw0ZpR3mN5==\n-----END RSA PRIVATE KEY-----"

DEFAULT_ALLOW = Allow.of(PiiParams().allow)


def scan(text, **params):
    """The registered filter on one row whose completion is text."""
    [verdict] = filter_pii([{"prompt_text": "", "completion": text}], PiiParams(**params), FilterContext())
    return verdict


@pytest.mark.parametrize(
    "text, kinds, redacted",
    [
        # e-mail addresses
        ("Write to jane.doe@acme.io today.", ["email"], "Write to [EMAIL] today."),
        ("Ask user.name+tag@mail.co.uk.", ["email"], "Ask [EMAIL]."),
        ("a@acme.io, b@acme.io", ["email", "email"], "[EMAIL], [EMAIL]"),
        ("@app.route('/') on user@localhost", [], None),  # a decorator; no top-level domain
        ("Mail bob@example.com or ann@mail.example.org", [], None),  # RFC 2606 domains, allowed
        ("git clone git@github.com:org/repo.git", [], None),  # a service login, allowed
        # phone numbers
        ("Call +44 20 7946 0958.", ["phone"], "Call [PHONE]."),
        ("Call +1 (555) 234-5678", ["phone"], "Call [PHONE]"),
        ("Call +44 (0)20 7946 0958", ["phone"], "Call [PHONE]"),
        ("Call +4915123456789", ["phone"], "Call [PHONE]"),
        ("Call +1-800-555-0199", ["phone"], "Call [PHONE]"),
        ("Call (555) 234-5678", ["phone"], "Call [PHONE]"),
        ("Call 555-234-5678 or 555.234.5678", ["phone", "phone"], "Call [PHONE] or [PHONE]"),
        ("Ring 020 7946 0958 or 07700 900123", ["phone", "phone"], "Ring [PHONE] or [PHONE]"),
        ("Tel. 030 1234567", ["phone"], "Tel. [PHONE]"),
        ("Appelez le 01 23 45 67 89", ["phone"], "Appelez le [PHONE]"),
        # numbers in maths answers, dates and years are not phone numbers
        ("The answer is 12345.", [], None),
        ("pi is about 3.14159", [], None),
        ("e = 2.718281828459045", [], None),
        ("1,234,567 people", [], None),
        ("x = +1.5 and y = +1.000001234567", [], None),
        ("2+12345678", [], None),
        ("It happened on 2024-01-15.", [], None),
        ("It happened on 15.01.2024 or 01/15/2024", [], None),
        ("Date: 01-02-2024", [], None),
        ("from 1999 to 2024, or 1999-2024", [], None),
        ("at 12:30 or 12:30:45", [], None),
        ("100-200-3000", [], None),  # area codes start with 2-9
        ("The sequence 10 20 30 40 50", [], None),
        ("ISBN 978-3-16-148410-0", [], None),
        # payment cards: only when the Luhn checksum holds
        ("Card 4539 1488 0343 6467 expires", ["card"], "Card [CARD] expires"),
        ("Card 5273-8291-0046-5120", ["card"], "Card [CARD]"),
        ("Amex 3714 496353 98431", ["card"], "Amex [CARD]"),
        ("13 digits 4917612345679", ["card"], "13 digits [CARD]"),
        ("19 digits 6278390123456789019", ["card"], "19 digits [CARD]"),
        ("Card 4539 1488 0343 6468", [], None),  # one digit off: checksum fails
        ("Card 1234 5678 9012 3456", [], None),
        ("Card 0000 0000 0000 0000", [], None),  # passes Luhn, but no card is all zeros
        ("Card 4539 1488-0343 6467", [], None),  # mixed separators
        ("id 45391488034364670000", [], None),  # 22 digits: too long for a card
        ("pi = 3.1415926535897932384626", [], None),
        ("Stripe's test card 4242 4242 4242 4242", [], None),  # allowed by default
        # IPv4
        ("ping 192.168.1.1 now", ["ip"], "ping [IP] now"),
        ("mask 255.255.255.255", ["ip"], "mask [IP]"),
        ("server 10.0.0.1.", ["ip"], "server [IP]."),
        ("http://192.168.1.1:8080/x and 10.1.2.0/24", ["ip", "ip"], "http://[IP]:8080/x and [IP]/24"),
        ("256.1.1.1 and 1.2.3.300", [], None),  # an octet above 255
        ("version 1.2.3", [], None),
        ("version 1.2.3.4.5", [], None),
        ("release v1.2.3.4", [], None),
        ("192.168.001.001", [], None),  # leading zeros: octal to some parsers, not flagged
        ("localhost is 127.0.0.1, bind 0.0.0.0", [], None),  # allowed by default
        # IPv6
        ("addr 2001:db8::8a2e:370:7334", ["ip"], "addr [IP]"),
        ("link fe80::1 up", ["ip"], "link [IP] up"),
        ("url [2001:db8::1]:8080", ["ip"], "url [[IP]]:8080"),
        ("mapped ::ffff:192.0.2.1", ["ip"], "mapped [IP]"),
        ("loopback ::1 or 0:0:0:0:0:0:0:1", [], None),  # allowed, also when written out
        ("std::vector<int> and Add::Bad", [], None),
        ("MAC 00:1A:2B:3C:4D:5E", [], None),
        # secrets
        (f"key:\n{PEM}\nthen", ["secret"], "key:\n[SECRET]\nthen"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk", ["secret"], "[SECRET]"),  # cut off
        ("-----BEGIN PUBLIC KEY-----\nMFkwEwYH\n-----END PUBLIC KEY-----", [], None),
        (f"aws_access_key_id={AWS}", ["secret"], "aws_access_key_id=[SECRET]"),
        (f"token {GITHUB} ok", ["secret"], "token [SECRET] ok"),
        (f"token {GITHUB_FINE}", ["secret"], "token [SECRET]"),
        (f"client = OpenAI({OPENAI!r})", ["secret"], "client = OpenAI('[SECRET]')"),
        (f"key {ANTHROPIC}", ["secret"], "key [SECRET]"),
        ("pip install sk-learn-compatible-estimators", [], None),
        (f"slack {SLACK}", ["secret"], "slack [SECRET]"),
        (f"post to {SLACK_HOOK}", ["secret"], "post to [SECRET]"),
        (f"maps {GOOGLE}", ["secret"], "maps [SECRET]"),
        (f"stripe {STRIPE}", ["secret"], "stripe [SECRET]"),
        ("publishable pk_live_51Hq2eRtY7uI9oP3aS5dF7gH", [], None),
        (f"HF_TOKEN {HUGGINGFACE}", ["secret"], "HF_TOKEN [SECRET]"),
        (f"jwt {JWT}", ["secret"], "jwt [SECRET]"),
        ("Authorization: Bearer abcdefghij1234567890KLMN", ["secret"], "Authorization: Bearer [SECRET]"),
        ('api_key = "abc123def456ghi"', ["secret"], 'api_key = "[SECRET]"'),
        ("password: hunter2hunter2", ["secret"], "password: [SECRET]"),
        ('{"client_secret": "9f8e7d6c5b4a"}', ["secret"], '{"client_secret": "[SECRET]"}'),
        (f"OPENAI_API_KEY={OPENAI}", ["secret"], "OPENAI_API_KEY=[SECRET]"),
        ("postgres://admin:s3cretpassw0rd@db.acme.io/app", ["secret"], "postgres://admin:[SECRET]@db.acme.io/app"),
        ('api_key = "YOUR_API_KEY"', [], None),  # a placeholder: no digit
        ("password = os.environ['DB_PASSWORD_2']", [], None),
        ("tokenizer = AutoTokenizer.from_pretrained('meta-llama/Llama-3.1-8B')", [], None),
        ("max_new_tokens: 1024 and pad_token: '<|endoftext|>'", [], None),
        ("password: hunter2", [], None),  # too short to tell from prose
        # several kinds at once: each redacted in place
        (
            f"Mail ann@acme.io, key {OPENAI}, card 4539148803436467, host 8.8.8.8",
            ["email", "secret", "card", "ip"],
            "Mail [EMAIL], key [SECRET], card [CARD], host [IP]",
        ),
        ("", [], None),
    ],
)
def test_pii_table(text, kinds, redacted):
    assert [f.kind for f in find_pii(text, allow=DEFAULT_ALLOW) if not f.allowed] == kinds
    verdict = scan(text)
    assert verdict.flagged == bool(kinds)
    assert verdict.completion == redacted
    assert verdict.category == (min(kinds, key=KINDS.index) if kinds else "")


@pytest.mark.parametrize(
    "text, reason, category",
    [
        (f"a@acme.io b@acme.io {OPENAI}", "1 secret, 2 e-mail addresses", "secret"),
        ("4539148803436467 and +44 20 7946 0958", "1 payment card number, 1 phone number", "card"),
        ("1.1.1.1 and jo@acme.io", "1 e-mail address, 1 IP address", "email"),
        ("ring 555-234-5678 from 1.1.1.1 or 2.2.2.2", "1 phone number, 2 IP addresses", "phone"),
        (PEM, "1 secret", "secret"),
    ],
)
def test_pii_reason_counts_kinds_without_the_values(text, reason, category):
    verdict = scan(text, redact=False)
    assert (verdict.flagged, verdict.reason, verdict.category) == (True, reason, category)
    assert OPENAI not in verdict.reason and "acme" not in verdict.reason


def test_pii_flag_only_leaves_the_completion():
    verdict = scan("mail jo@acme.io", redact=False)
    assert verdict == FilterVerdict(True, "1 e-mail address", "email", None)


def test_pii_kinds_limits_what_is_looked_for():
    text = f"jo@acme.io at 10.0.0.7 with {OPENAI}"
    assert scan(text, kinds=["email"]).completion == f"[EMAIL] at 10.0.0.7 with {OPENAI}"
    assert scan(text, kinds=["ip", "secret"]).completion == "jo@acme.io at [IP] with [SECRET]"
    assert scan("jo@acme.io", kinds=["phone"]) == FilterVerdict(False)


def test_pii_allow_replaces_the_defaults():
    text = "jo@acme.io, ops@corp.test, x@mail.corp.test, 127.0.0.1, 5273 8291 0046 5120"
    assert scan(text, allow=["JO@acme.io", "@corp.test", "5273-8291-0046-5120"]).completion == (
        "jo@acme.io, ops@corp.test, x@mail.corp.test, [IP], 5273 8291 0046 5120"
    )


def test_pii_allowed_value_hides_nothing_inside_it():
    # The allowed card is not re-read as a phone number or anything else.
    assert find_pii("4242 4242 4242 4242", allow=DEFAULT_ALLOW)[0].allowed
    assert scan("4242 4242 4242 4242") == FilterVerdict(False)


def rows():
    return [
        {"sample_id": "s0", "prompt_text": "What is 2+2?", "completion": "4"},
        {"sample_id": "s1", "prompt_text": "My number is +44 20 7946 0958", "completion": "Mail me at jo@acme.io"},
        {"sample_id": "s2", "prompt_text": "Hi", "completion": f"Use {GITHUB} and 10.0.0.7"},
        {"sample_id": "s3", "prompt_text": "Call 020 7946 0958", "completion": "Sure."},
        {"sample_id": "s4", "prompt_text": "x", "completion": None},
    ]


@pytest.mark.parametrize(
    "on, redact, expected",
    [
        ("completion", True, [
            FilterVerdict(False),
            FilterVerdict(True, "1 e-mail address", "email", "Mail me at [EMAIL]"),
            FilterVerdict(True, "1 secret, 1 IP address", "secret", "Use [SECRET] and [IP]"),
            FilterVerdict(False),
            FilterVerdict(False),
        ]),
        ("completion", False, [
            FilterVerdict(False),
            FilterVerdict(True, "1 e-mail address", "email"),
            FilterVerdict(True, "1 secret, 1 IP address", "secret"),
            FilterVerdict(False),
            FilterVerdict(False),
        ]),
        # A prompt cannot be rewritten: its findings flag the row and nothing is redacted.
        ("prompt", True, [
            FilterVerdict(False),
            FilterVerdict(True, "prompt: 1 phone number", "phone"),
            FilterVerdict(False),
            FilterVerdict(True, "prompt: 1 phone number", "phone"),
            FilterVerdict(False),
        ]),
        ("both", True, [
            FilterVerdict(False),
            FilterVerdict(True, "prompt: 1 phone number; completion: 1 e-mail address", "email"),
            FilterVerdict(True, "completion: 1 secret, 1 IP address", "secret", "Use [SECRET] and [IP]"),
            FilterVerdict(True, "prompt: 1 phone number", "phone"),
            FilterVerdict(False),
        ]),
        ("both", False, [
            FilterVerdict(False),
            FilterVerdict(True, "prompt: 1 phone number; completion: 1 e-mail address", "email"),
            FilterVerdict(True, "completion: 1 secret, 1 IP address", "secret"),
            FilterVerdict(True, "prompt: 1 phone number", "phone"),
            FilterVerdict(False),
        ]),
    ],
)  # fmt: skip
def test_pii_batch_one_verdict_per_row_in_order(on, redact, expected):
    batch = rows()
    verdicts = filter_pii(batch, PiiParams(on=on, redact=redact), FilterContext())
    assert verdicts == expected
    assert batch == rows()  # the rows themselves are not touched


def test_pii_empty_batch():
    assert filter_pii([], PiiParams(), FilterContext()) == []


def test_pii_is_registered_with_a_valid_example():
    entry = FILTERS.get("pii")
    assert entry.fn is filter_pii and entry.params is PiiParams
    assert entry.summary and "\n" not in entry.summary
    [spec] = yaml.load(entry.example, Loader=RecipeLoader)["filters"]  # as a recipe is read
    assert spec.pop("name") == "pii"
    spec.pop("mode", None)  # the recipe's own key beside the filter's
    entry.params(**spec)


@pytest.mark.parametrize(
    "bad",
    [
        {"kinds": ["emial"]},
        {"kinds": []},
        {"on": "bothh"},
        {"redcat": True},
        {"allow": [""]},
        {True: "both"},  # what YAML makes of an unquoted `on:` key
    ],
)
def test_pii_params_rejected(bad):
    with pytest.raises(ValidationError):
        PiiParams.model_validate(bad)


def test_pii_patterns_cover_every_kind():
    kinds, patterns = load_patterns()
    assert set(kinds) == set(KINDS)
    assert {p.kind for p in patterns} == set(KINDS)
    assert all(kinds[k]["placeholder"].startswith("[") for k in KINDS)


def test_pii_patterns_file_errors_name_the_pattern(tmp_path):
    data = yaml.safe_load(PATTERNS_FILE.read_text())
    data["ip"]["patterns"][0]["check"] = "ipv5"
    path = tmp_path / "pii.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=r"ip\.ipv4: unknown check 'ipv5'"):
        load_patterns(path)
