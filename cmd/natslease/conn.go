package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natskvlease/natskvlease"
)

// connFlags are the connection flags, named as the nats CLI names them.
type connFlags struct {
	server   string
	creds    string
	user     string
	password string
	tlsCert  string
	tlsKey   string
	tlsCA    string
	// JetStream reached through a domain (a leaf node's hub) or an
	// account import's API prefix.
	jsDomain    string
	jsAPIPrefix string
}

// register adds the flags to fs. An empty defaultServer means $NATS_URL,
// else nats.DefaultURL.
func (c *connFlags) register(fs *flag.FlagSet, defaultServer, serverHelp string) {
	if serverHelp == "" {
		if defaultServer = os.Getenv("NATS_URL"); defaultServer == "" {
			defaultServer = nats.DefaultURL
		}
		serverHelp = "NATS server `URLs`, comma separated ($NATS_URL, when set, is the default)"
	}
	fs.StringVar(&c.server, "server", defaultServer, serverHelp)
	fs.StringVar(&c.server, "s", defaultServer, "short for --server")
	fs.StringVar(&c.creds, "creds", "", "user credentials `file` (JWT and NKey seed)")
	fs.StringVar(&c.user, "user", "", "user `name`, or token when --password is empty")
	fs.StringVar(&c.password, "password", "", "`password` for --user")
	fs.StringVar(&c.tlsCert, "tlscert", "", "TLS client certificate `file`")
	fs.StringVar(&c.tlsKey, "tlskey", "", "TLS client private key `file`")
	fs.StringVar(&c.tlsCA, "tlsca", "", "TLS certificate authority `file` to verify the server with")
	fs.StringVar(&c.jsDomain, "js-domain", "", "JetStream `domain` holding the bucket (e.g. the hub's, from a leaf node)")
	fs.StringVar(&c.jsAPIPrefix, "js-api-prefix", "", "JetStream API `prefix` an account import maps (e.g. JS.acc.API)")
}

// recordingDialer remembers the last dial error, which nats.Connect
// reduces to "no servers available".
type recordingDialer struct {
	d    net.Dialer
	mu   sync.Mutex
	last error
}

func (r *recordingDialer) Dial(network, address string) (net.Conn, error) {
	c, err := r.d.Dial(network, address)
	if err != nil {
		r.mu.Lock()
		r.last = err
		r.mu.Unlock()
	}
	return c, err
}

func (r *recordingDialer) lastErr() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
}

// connect opens the connection and checks that the server can hold
// leases: NATS 2.11 or newer with JetStream enabled. Errors are one
// line, fit for an operator.
func (c *connFlags) connect(ctx context.Context) (*nats.Conn, jetstream.JetStream, error) {
	where := redact(c.server)
	if c.tlsKey != "" && c.tlsCert == "" || c.tlsCert != "" && c.tlsKey == "" {
		return nil, nil, errors.New("--tlscert and --tlskey go together")
	}
	dialer := &recordingDialer{d: net.Dialer{Timeout: 5 * time.Second}}
	opts := []nats.Option{
		nats.Name("natslease"),
		nats.SetCustomDialer(dialer),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.NoCallbacksAfterClientClose(),
	}
	if c.creds != "" {
		opts = append(opts, nats.UserCredentials(c.creds))
	}
	if c.user != "" {
		if c.password == "" {
			opts = append(opts, nats.Token(c.user))
		} else {
			opts = append(opts, nats.UserInfo(c.user, c.password))
		}
	}
	if c.tlsCert != "" {
		opts = append(opts, nats.ClientCert(c.tlsCert, c.tlsKey))
	}
	if c.tlsCA != "" {
		opts = append(opts, nats.RootCAs(c.tlsCA))
	}
	nc, err := nats.Connect(c.server, opts...)
	if err != nil {
		if derr := dialer.lastErr(); derr != nil && errors.Is(err, nats.ErrNoServers) {
			return nil, nil, fmt.Errorf("cannot connect to %s: %s", where, dialReason(derr))
		}
		return nil, nil, fmt.Errorf("cannot connect to %s: %v", where, err)
	}
	if err := natskvlease.ValidateNatsVersion(nc); err != nil {
		version := nc.ConnectedServerVersion()
		nc.Close()
		if errors.Is(err, natskvlease.ErrNatsVersionNotSupported) {
			return nil, nil, fmt.Errorf("nats-server at %s is version %s; natslease needs 2.11.0 or newer (per-message TTLs)", where, version)
		}
		return nil, nil, fmt.Errorf("nats-server at %s: %v", where, err)
	}
	var js jetstream.JetStream
	switch {
	case c.jsDomain != "" && c.jsAPIPrefix != "":
		nc.Close()
		return nil, nil, errors.New("--js-domain and --js-api-prefix exclude each other")
	case c.jsDomain != "":
		js, err = jetstream.NewWithDomain(nc, c.jsDomain)
	case c.jsAPIPrefix != "":
		js, err = jetstream.NewWithAPIPrefix(nc, c.jsAPIPrefix)
	default:
		js, err = jetstream.New(nc)
	}
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("JetStream at %s: %v", where, err)
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := natskvlease.ValidateJetStreamEnabled(cctx, js, nil); err != nil {
		nc.Close()
		if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
			return nil, nil, fmt.Errorf("JetStream is not enabled on %s (start nats-server with -js, or enable it for this account)", where)
		}
		return nil, nil, fmt.Errorf("JetStream does not answer at %s: %v", where, err)
	}
	return nc, js, nil
}

// dialReason is the heart of a dial error: "connection refused".
func dialReason(err error) string {
	var se *os.SyscallError
	if errors.As(err, &se) {
		return se.Err.Error()
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Err.Error()
	}
	return err.Error()
}

// redact hides passwords in server URLs.
func redact(servers string) string {
	parts := strings.Split(servers, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil && u.User != nil {
			parts[i] = u.Redacted()
		}
	}
	return strings.Join(parts, ",")
}

// explain turns errors of the lock and election packages into one line
// an operator can act on.
func explain(err error) error {
	switch {
	case errors.Is(err, natskvlease.ErrNatsVersionNotSupported):
		return fmt.Errorf("the nats-server is too old: natslease needs 2.11.0 or newer (%v)", err)
	case errors.Is(err, jetstream.ErrJetStreamNotEnabled), errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount):
		return fmt.Errorf("JetStream is not enabled (%v)", err)
	case errors.Is(err, natskvlease.ErrPermissionDenied):
		return fmt.Errorf("not allowed: %v", err)
	}
	return err
}
