"""Agent usage logs -> small models: the log import (issue 21, steps 1 and 2).

`import_logs` reads logged model calls (`openai`: chat-completions request/response pairs;
`otel`: OpenTelemetry GenAI spans as OTLP JSON), redacts secrets and personal data in every
text of a call before anything is written, marks failed calls and duplicates, and adds the new
calls to a `UsageStore` (Parquet parts and a manifest). `distill usage import` is its command.
"""

from distill.usage.formats import FORMATS, LogFileError
from distill.usage.importer import ImportSummary, import_logs
from distill.usage.store import CALL_SCHEMA, StoreError, UsageStore

__all__ = ["CALL_SCHEMA", "FORMATS", "ImportSummary", "LogFileError", "StoreError", "UsageStore", "import_logs"]
