package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/natskvlease/natskvlease/internal/natstest"
)

// The connection flags, end to end against servers that demand them: a
// lock is taken and released only with the right ones, and the wrong or
// missing ones give one line saying why.

func TestUserAndPassword(t *testing.T) {
	srv := natstest.Start(t, func(o *server.Options) { o.Username, o.Password = "alice", "s3cret" })
	lockWith(t, srv, 1, "authorization violation")
	lockWith(t, srv, 1, "authorization violation", "--user", "alice", "--password", "wrong")
	lockWith(t, srv, 0, "", "--user", "alice", "--password", "s3cret")
}

func TestToken(t *testing.T) {
	srv := natstest.Start(t, func(o *server.Options) { o.Authorization = "t0ken" })
	lockWith(t, srv, 1, "authorization violation")
	lockWith(t, srv, 0, "", "--user", "t0ken")
}

func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca := newCA(t)
	serverCert := ca.issue(t, "server", x509.ExtKeyUsageServerAuth)
	clientCert := ca.issue(t, "client", x509.ExtKeyUsageClientAuth)
	caFile := writePEM(t, dir, "ca.pem", "CERTIFICATE", ca.cert.Raw)
	certFile := writePEM(t, dir, "client.pem", "CERTIFICATE", clientCert.Certificate[0])
	keyDER, err := x509.MarshalECPrivateKey(clientCert.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	keyFile := writePEM(t, dir, "client-key.pem", "EC PRIVATE KEY", keyDER)

	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	srv := natstest.Start(t, func(o *server.Options) {
		o.TLS, o.TLSVerify = true, true
		o.TLSConfig = &tls.Config{
			Certificates: []tls.Certificate{serverCert},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    pool,
			MinVersion:   tls.VersionTLS12,
		}
	})
	lockWith(t, srv, 1, "certificate", "--tlscert", certFile, "--tlskey", keyFile) // the server's is not trusted
	lockWith(t, srv, 1, "", "--tlsca", caFile)                                     // no client certificate
	lockWith(t, srv, 1, "--tlscert and --tlskey go together", "--tlsca", caFile, "--tlscert", certFile)
	lockWith(t, srv, 0, "", "--tlsca", caFile, "--tlscert", certFile, "--tlskey", keyFile)
}

func TestCredentialsFileMissing(t *testing.T) {
	srv := natstest.Start(t)
	missing := filepath.Join(t.TempDir(), "nobody.creds")
	lockWith(t, srv, 1, "nobody.creds", "--creds", missing)
}

// lockWith runs `natslease lock` on srv with the connection flags given
// and checks its status; a failure must be one line containing want.
func lockWith(t *testing.T, srv *natstest.Server, wantStatus int, want string, flags ...string) {
	t.Helper()
	args := append([]string{"lock", "--server", srv.URL()}, flags...)
	args = append(args, "auth.key", "--", "true")
	code, _, stderr := runNatslease(t, 20*time.Second, args...)
	if code != wantStatus {
		t.Fatalf("%q: status %d, stderr %q; want %d", flags, code, stderr, wantStatus)
	}
	if wantStatus == 0 {
		return
	}
	if strings.Count(stderr, "\n") != 1 || !strings.Contains(strings.ToLower(stderr), strings.ToLower(want)) {
		t.Fatalf("%q: stderr %q; want one line containing %q", flags, stderr, want)
	}
}

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newCA(t *testing.T) testCA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "natslease test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return testCA{cert: cert, key: key}
}

// issue signs a certificate for 127.0.0.1 with the given usage.
func (ca testCA) issue(t *testing.T, name string, usage x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func writePEM(t *testing.T, dir, name, blockType string, der []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: blockType, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestCredentialsFile: a server in operator mode admits a user only with
// its credentials file (JWT and NKey seed), as `nats --creds` does.
func TestCredentialsFile(t *testing.T) {
	operator, _ := nkeys.CreateOperator()
	operatorPub, _ := operator.PublicKey()
	operatorClaims := jwt.NewOperatorClaims(operatorPub)
	operatorJWT, err := operatorClaims.Encode(operator)
	if err != nil {
		t.Fatal(err)
	}
	account, _ := nkeys.CreateAccount()
	accountPub, _ := account.PublicKey()
	accountClaims := jwt.NewAccountClaims(accountPub)
	accountClaims.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
	accountJWT, err := accountClaims.Encode(operator)
	if err != nil {
		t.Fatal(err)
	}
	user, _ := nkeys.CreateUser()
	userPub, _ := user.PublicKey()
	userJWT, err := jwt.NewUserClaims(userPub).Encode(account)
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := user.Seed()
	creds, err := jwt.FormatUserConfig(userJWT, seed)
	if err != nil {
		t.Fatal(err)
	}
	credsFile := filepath.Join(t.TempDir(), "user.creds")
	if err := os.WriteFile(credsFile, creds, 0o600); err != nil {
		t.Fatal(err)
	}

	opClaims, err := jwt.DecodeOperatorClaims(operatorJWT)
	if err != nil {
		t.Fatal(err)
	}
	system, _ := nkeys.CreateAccount()
	systemPub, _ := system.PublicKey()
	systemJWT, err := jwt.NewAccountClaims(systemPub).Encode(operator)
	if err != nil {
		t.Fatal(err)
	}
	resolver := &server.MemAccResolver{}
	for pub, claims := range map[string]string{accountPub: accountJWT, systemPub: systemJWT} {
		if err := resolver.Store(pub, claims); err != nil {
			t.Fatal(err)
		}
	}
	srv := natstest.Start(t, func(o *server.Options) {
		o.TrustedOperators = []*jwt.OperatorClaims{opClaims}
		o.AccountResolver = resolver
		o.SystemAccount = systemPub // JetStream in operator mode wants one
	})
	lockWith(t, srv, 1, "authorization violation")
	lockWith(t, srv, 0, "", "--creds", credsFile)
}
