"""Natural language to an Elasticsearch query, as a prompt program: `select` the index, then
the query itself as a JSON-schema hole (a `match` on one field, a size, an optional terms
aggregation), so every reply is a query Elasticsearch accepts for these indexes.

    python examples/programs/es_query.py "How many articles did each author write?"

Runs on SmolLM2 (`Engine.load("smollm2")`); tests/infer/test_program_examples.py runs it on a
tiny random model, sampled, and checks every query against the schema.
"""

from __future__ import annotations

import json
import sys

from lmstack.program import gen, select

INDEXES = {"articles": ["author", "title", "publication_date"],
           "guttenberg": ["author", "title", "publication_date", "content"]}
TEXT = {"type": "string", "maxLength": 40}
SCHEMA = {
    "type": "object",
    "properties": {
        "size": {"type": "integer", "minimum": 0, "maximum": 100},
        "query": {"type": "object", "properties": {"match": {"anyOf": [
            {"type": "object", "properties": {f: TEXT}, "required": [f]}
            for f in ("author", "title", "content")]}}, "required": ["match"]},
        "aggs": {"type": "object", "properties": {"by_field": {
            "type": "object", "properties": {"terms": {
                "type": "object", "properties": {"field": {"enum": ["author", "title"]}},
                "required": ["field"]}}, "required": ["terms"]}}, "required": ["by_field"]},
    },
    "required": ["size", "query"],
}
EXAMPLE = ('Request: articles by Jane Austen\nIndex: articles\n'
           'Query: {"size": 10, "query": {"match": {"author": "Jane Austen"}}}\n\n')


def nl_to_es(s, request: str) -> None:
    """Pick the index, then write the query under the schema."""
    s += "Write an Elasticsearch query for each request.\n\n" + EXAMPLE
    s += "Request: " + request + "\nIndex: " + select("index", list(INDEXES))
    s += "\nQuery: " + gen("query", json_schema=SCHEMA, max_tokens=200)


PROGRAM, INPUTS = nl_to_es, {"request": "count the articles of each author"}

if __name__ == "__main__":
    from lmstack.infer import Engine
    from lmstack.program import run

    request = " ".join(sys.argv[1:]) or INPUTS["request"]
    s = run(nl_to_es, Engine.load("smollm2"), request)
    print(s["index"], json.dumps(json.loads(s["query"]), indent=1), s.stats, sep="\n")
