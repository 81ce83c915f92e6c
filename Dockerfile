# softswitch daemon on the example configuration.
#   docker build -t softswitch . && docker run --rm -p 5060:5060/udp -p 5060:5060 -p 9090:9090 softswitch
FROM python:3.11-slim-bookworm
WORKDIR /opt/softswitch
COPY pyproject.toml README.md ./
COPY switch switch
COPY media media
COPY config config
# SIP and metrics listen on every interface; media binds the container's own address at start
# (a specific address, which kernel forwarding needs: run with --cap-add BPF --cap-add NET_ADMIN
# for media.kernel to work, or it relays in the process), written into SDP unless
# MEDIA_ADVERTISE names the address phones reach (the host's, behind NAT or -p).
RUN pip install --no-cache-dir . \
 && sed -e 's/address: 127.0.0.1, port/address: 0.0.0.0, port/' \
        -e 's/listen: 127.0.0.1:9090/listen: 0.0.0.0:9090/' \
        -e 's|url: sqlite:///var/softswitch.db|url: sqlite:////var/lib/softswitch/softswitch.db|' \
        config/softswitch.yaml > config/container.yaml \
 && softswitch check -c config/container.yaml
VOLUME /var/lib/softswitch
EXPOSE 5060/udp 5060/tcp 9090/tcp
STOPSIGNAL SIGTERM
CMD ["sh", "-c", "ip=$(hostname -i | cut -d' ' -f1) && sed -e \"s/^  address: 127.0.0.1 /  address: $ip /\" -e \"s/^  # advertise: [0-9.]*/  advertise: ${MEDIA_ADVERTISE:-$ip}/\" config/container.yaml > /tmp/softswitch.yaml && exec softswitch run -c /tmp/softswitch.yaml"]
