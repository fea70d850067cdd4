# The balancer (and its fake worker, for demos): docker build -t llm-balancer .
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY balancer ./balancer
COPY probes ./probes
RUN pip install --no-cache-dir . && mkdir /data && chown nobody /data
ENV BALANCER_HOST=0.0.0.0 \
    BALANCER_STORE=sqlite:////data/balancer.db
VOLUME /data
EXPOSE 8007
USER nobody
ENTRYPOINT ["balancer"]
CMD ["serve"]
