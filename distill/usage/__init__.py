"""Agent usage logs -> small models: the log import, task clustering and plan (issue 21, steps 1-4).

`import_logs` reads logged model calls (`openai`: chat-completions request/response pairs;
`otel`: OpenTelemetry GenAI spans as OTLP JSON), redacts secrets and personal data in every
text of a call before anything is written, marks failed calls and duplicates, and adds the new
calls to a `UsageStore` (Parquet parts and a manifest). `distill usage import` is its command.
`clusters.cluster_store` groups the stored calls into recurring tasks, by tag or automatically
(`distill usage clusters`); `plan.plan_store` writes a recipe per cluster worth converting
(`distill usage plan`); `synthetic.generate_logs` writes a seeded agent's logs to try both on
(`distill usage demo-logs`).
"""

from distill.usage.formats import FORMATS, LogFileError
from distill.usage.importer import ImportSummary, import_logs
from distill.usage.store import CALL_SCHEMA, StoreError, UsageStore

# distill.usage.clusters (cluster_store) and distill.usage.synthetic (generate_logs) are imported
# where used: scikit-learn and the tool catalogue need not load for an import.
__all__ = ["CALL_SCHEMA", "FORMATS", "ImportSummary", "LogFileError", "StoreError", "UsageStore", "import_logs"]
