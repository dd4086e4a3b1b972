"""The Go text/template subset behind -f/--format."""

from __future__ import annotations

import pytest

from cnm.cli.template import Template, TemplateError, render

DATA = {
    "Name": "/web",
    "Id": "c268f1",
    "Config": {
        "MacAddress": "92:d0:c6:0a:29:33",
        "Env": ["A=1", "B=2"],
        "Labels": {"z": "26", "a": "1"},
        "Tty": False,
        "Cmd": None,
    },
    "NetworkSettings": {
        "Networks": {"bridge": {"IPAddress": "172.17.0.2"}, "backend": {"IPAddress": "10.10.0.10"}},
        "Ports": {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]},
    },
    "State": {"Running": True, "ExitCode": 0, "Pid": 42},
}


@pytest.mark.parametrize(
    "src, expected",
    [
        ("{{ .Config.MacAddress }}", "92:d0:c6:0a:29:33"),
        ("{{.Name}}", "/web"),
        ("{{json .Config.Env}}", '["A=1","B=2"]'),
        ("{{json .State}}", '{"Running":true,"ExitCode":0,"Pid":42}'),
        ('{{index .Config.Labels "z"}}', "26"),
        ('{{(index (index .NetworkSettings.Ports "80/tcp") 0).HostPort}}', "8080"),
        ("{{range .Config.Env}}<{{.}}>{{end}}", "<A=1><B=2>"),
        ("{{range $i, $e := .Config.Env}}{{$i}}:{{$e}} {{end}}", "0:A=1 1:B=2 "),
        (
            "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}={{$v.IPAddress}};{{end}}",
            "backend=10.10.0.10;bridge=172.17.0.2;",
        ),
        ("{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", "10.10.0.10 172.17.0.2 "),
        ("{{if .State.Running}}up{{else}}down{{end}}", "up"),
        ("{{if .Config.Tty}}tty{{else if .State.Pid}}pid{{else}}none{{end}}", "pid"),
        ("{{if not .Config.Tty}}no tty{{end}}", "no tty"),
        ("{{with .NetworkSettings.Networks.bridge}}{{.IPAddress}}{{end}}", "172.17.0.2"),
        ('{{.Name | upper}} {{lower "ABC"}} {{join .Config.Env ", "}}', "/WEB abc A=1, B=2"),
        ("{{println .Name}}", "/web\n"),
        ("{{.Config.Labels}}", "map[a:1 z:26]"),
        ("{{.Config.Env}}", "[A=1 B=2]"),
        ("{{.Config.Cmd}}", "<no value>"),
        ("{{len .Config.Env}} {{eq .State.ExitCode 0}} {{gt .State.Pid 1}}", "2 true true"),
        ('{{printf "%s has %d vars" .Name (len .Config.Env)}}', "/web has 2 vars"),
        ("{{$n := .Name}}{{$n}}{{/* comment */}}", "/web"),
        ("a  {{- .Id -}}  b", "ac268f1b"),
        ('{{split "a,b" ","}}', "[a b]"),
        ('{{and .State.Running .Name}} {{or .Config.Tty "x"}}', "/web x"),
        ("{{json .}}", None),
    ],
)
def test_render(src, expected):
    out = render(src, DATA)
    if expected is not None:
        assert out == expected
    else:
        assert out.startswith('{"Name":"/web"')


def test_json_escapes_html_like_go():
    assert render("{{json .}}", {"a": "<b>&"}) == '{"a":"\\u003cb\\u003e\\u0026"}'


def test_method_fields_take_arguments():
    row = {"Label": lambda name: {"k": "v"}.get(name, "")}
    assert render('{{.Label "k"}}', row) == "v"


@pytest.mark.parametrize(
    "src, message",
    [
        ("{{.Name", "template: :1: unclosed action"),
        ("{{foo .Name}}", 'template: :1: function "foo" not defined'),
        ("{{if .Name}}x", "template: :1: unexpected EOF"),
        ("{{end}}", "template: :1: unexpected {{end}}"),
        ('{{template "x"}}', "template: :1: {{template}} is not supported by cnm's template subset"),
    ],
)
def test_parse_errors(src, message):
    with pytest.raises(TemplateError) as err:
        Template(src)
    assert str(err.value) == message


def test_missing_keys():
    assert render("{{.Nope}}", DATA) == "<no value>"
    with pytest.raises(TemplateError) as err:
        Template("{{.Config.Nope}}", missingkey="error").execute(DATA)
    assert str(err.value) == 'template: :1:2: executing "" at <.Config.Nope>: map has no entry for key "Nope"'
    with pytest.raises(TemplateError, match="nil pointer evaluating interface {}.X"):
        render("{{.Config.Cmd.X}}", DATA)
