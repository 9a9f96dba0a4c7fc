package natskvlease

import (
	"os"
	"strings"
	"testing"
)

// The README's Quick start, dlock and leadelect snippets are the bodies
// of functions in the example files, which compile and run as tests: a
// snippet edited in one place and not the other fails here.
func TestREADMESnippetsAreExamples(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ heading, file string }{
		{"## Quick start", "example_test.go"},
		{"## dlock: a distributed lock", "dlock/example_test.go"},
		{"## leadelect: leader election", "leadelect/example_test.go"},
	} {
		snippet := goBlockAfter(t, string(readme), tc.heading)
		src, err := os.ReadFile(tc.file)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(src), indent(snippet)) {
			t.Errorf("the README's snippet under %q is not the body of a function in %s:\n%s", tc.heading, tc.file, snippet)
		}
	}
}

func goBlockAfter(t *testing.T, text, heading string) string {
	t.Helper()
	i := strings.Index(text, heading+"\n")
	if i < 0 {
		t.Fatalf("README has no %q", heading)
	}
	rest := text[i:]
	j := strings.Index(rest, "```go\n")
	if j < 0 {
		t.Fatalf("no Go snippet after %q", heading)
	}
	rest = rest[j+len("```go\n"):]
	return rest[:strings.Index(rest, "```")]
}

// indent indents the non-empty lines of code by one tab, as in a
// function body.
func indent(code string) string {
	lines := strings.Split(strings.TrimRight(code, "\n"), "\n")
	for i, l := range lines {
		if l != "" {
			lines[i] = "\t" + l
		}
	}
	return strings.Join(lines, "\n") + "\n"
}
