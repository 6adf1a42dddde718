# One image for every evostream service; docker-compose.yml picks the command.
# Stage 1: the dashboard's front-end assets from npm (scripts/web.sh does the same outside Docker).
FROM node:22-slim AS web
WORKDIR /web
COPY evostream/api/web/package.json evostream/api/web/package-lock.json ./
RUN npm ci --no-audit --no-fund --silent

# Stage 2: the wheel's contents installed with pip, as `pip install evostream` would (the links evostream/<folder> ->
# ../<folder> are copied as links and followed by the build).
FROM python:3.11-slim
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
WORKDIR /app
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock
COPY . .
COPY --from=web /web/node_modules/uplot/dist/uPlot.iife.min.js /web/node_modules/uplot/dist/uPlot.min.css evostream/api/static/vendor/
COPY --from=web /web/node_modules/uplot/LICENSE evostream/api/static/vendor/uPlot.LICENSE
RUN pip install --no-cache-dir --no-deps .
# From / (not /app, whose source tree `python -c` would import): the installed package ships the dashboard's script.
WORKDIR /
RUN python -c "import importlib.resources as r; assert r.files('evostream.api').joinpath('static/vendor/uPlot.iife.min.js').is_file()"
# The health of whatever component the container runs (PID 1's command; every one of them under `evostream up`): its
# process, the broker, its consumer groups' members, the API's /health. One-shots (topics, genesis) have none to check.
HEALTHCHECK --interval=30s --timeout=20s --start-period=120s --retries=3 \
    CMD ["evostream", "status", "--component", "auto", "--check"]
ENTRYPOINT ["evostream"]
