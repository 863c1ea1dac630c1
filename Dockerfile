# The casebridge image for docker-compose.yml (the tests and the demo need no Docker).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY contracts contracts
COPY connectors connectors
COPY mappings mappings
COPY router router
COPY sandboxes sandboxes
COPY casebridge casebridge
COPY monitor monitor
RUN pip install --no-cache-dir .
ENTRYPOINT ["casebridge"]
